// `ipset save` output: the sets kube-proxy's IPVS mode classifies traffic
// with (KUBE-CLUSTER-IP, KUBE-LOAD-BALANCER-LOCAL, KUBE-NODE-PORT-TCP …, see
// pkg/proxy/ipvs/ipset.go and proxier.go ipsetInfo). The save format is
// printed by ipset's lib/session.c in IPSET_LIST_SAVE mode:
// - list_create(): `create NAME TYPE` then ` KEYWORD VALUE` or ` KEYWORD` for
//   each create option the set has (`family` only where the type has a choice,
//   so bitmap:port has none). Current ipset (7.17 in the lab) also prints
//   `bucketsize` and `initval`; the 6.x seen in older issue pastes does not,
//   and nothing here depends on either.
// - list_adt(): `add NAME ELEMENT` then the element's options the same way:
//   `timeout N`, `packets N`, `bytes N`, `comment "…"` (ipset refuses `"` in a
//   comment, so there is nothing to unescape), `skbmark`, `skbprio`,
//   `skbqueue`, `nomatch`.
// Elements are the type's parts joined by `,` (lib/print.c): an address or
// `addr/len` (IPv6 compressed), `proto:port` with the protocol's name (`tcp:80`,
// `icmp:echo-request`, `gre:0`), a bare port for bitmap:port (which keeps no
// protocol: `add S tcp:30080` is saved as `30080`), an interface, a MAC, a mark.
// `ipset list` (plain), `-o xml` and `-o json` print the same sets in other
// layouts; they are refused with a problem saying so, not half read.
import { canonicalIp } from '../../contract/address.ts';
import type { IpsetMember, IpsetRecord, IpsetSet } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

/** Create options printed without a value (IPSET_NO_ARG keywords of lib/args.c). */
const CREATE_FLAGS = new Set(['counters', 'comment', 'skbinfo', 'forceadd']);
/** Element options with a value, and the one without. */
const ELEMENT_OPTIONS = new Set(['timeout', 'packets', 'bytes', 'comment', 'skbmark', 'skbprio', 'skbqueue']);
const NOMATCH = 'nomatch';

const DIGITS = /^\d+$/;
/** `proto:port` as ipset_print_proto_port() prints it; the port part may be an icmp type name or `type/code`. */
const PROTO_PORT = /^([a-z][a-z0-9-]*|\d+):(\S+)$/;
/** `ipset list`, list_create() in plain mode: what kube-proxy itself reads back, and what people paste. */
const LIST_HEADER = /^(Name|Type|Revision|Header|Size in memory|References|Number of entries|Members):( |$)/;

const NOT_SAVE = 'not an `ipset save` line (expected `create SET TYPE …` or `add SET ELEMENT …`)';
const LIST_OUTPUT = '`ipset list` output: this parser reads `ipset save` (create/add lines); take the sets with `ipset save` instead (the listing that starts here is skipped)';
const XML_OUTPUT = '`ipset … -o xml` output: take the sets with a plain `ipset save` instead (skipped up to the next create/add line)';
const JSON_OUTPUT = '`ipset … -o json` output: take the sets with a plain `ipset save` instead (skipped up to the next create/add line)';

type Part = 'ip' | 'net' | 'port' | 'other';

interface KnownSet {
  readonly parts: readonly Part[] | null;
}

/** The element layout of a type name: `hash:ip,port,net` → ip, port, net. null for a method ipset does not have. */
function partsOfType(type: string): Part[] | null {
  const colon = type.indexOf(':');
  const method = type.slice(0, colon);
  if (colon < 0 || (method !== 'hash' && method !== 'bitmap' && method !== 'list')) return null;
  return type.slice(colon + 1).split(',').map((d): Part => (d === 'ip' || d === 'net' || d === 'port' ? d : 'other'));
}

/** Tokens split at blanks; a `"…"` stretch (an element comment) is one token, quotes removed. */
function tokenize(line: string): string[] | null {
  const out: string[] = [];
  let i = 0;
  while (i < line.length) {
    const c = line[i];
    if (c === ' ' || c === '\t') { i++; continue; }
    if (c === '"') {
      const end = line.indexOf('"', i + 1);
      if (end < 0) return null;
      out.push(line.slice(i + 1, end));
      i = end + 1;
      continue;
    }
    let j = i;
    while (j < line.length && line[j] !== ' ' && line[j] !== '\t') j++;
    out.push(line.slice(i, j));
    i = j;
  }
  return out;
}

/** `10.0.0.0/24`, `fd00::a` or `198.18.0.1` (ipset leaves out a host prefix), canonical; null when not an address. */
function addressOrNet(text: string): string | null {
  const slash = text.indexOf('/');
  const ip = canonicalIp(slash < 0 ? text : text.slice(0, slash));
  if (ip === null) return null;
  if (slash < 0) return ip;
  const len = text.slice(slash + 1);
  const max = ip.includes(':') ? 128 : 32;
  return DIGITS.test(len) && Number(len) <= max ? `${ip}/${Number(len)}` : null;
}

function protoPort(text: string): { protocol: string | null; port: number | null } | null {
  if (DIGITS.test(text)) return Number(text) <= 65535 ? { protocol: null, port: Number(text) } : null;
  const m = PROTO_PORT.exec(text);
  if (m === null) return null;
  const protocol = m[1] ?? '';
  const port = m[2] ?? '';
  // icmp/icmpv6 carry a type name or `type/code` where other protocols have a port.
  if (!DIGITS.test(port)) return protocol.startsWith('icmp') ? { protocol, port: null } : null;
  return Number(port) <= 65535 ? { protocol, port: Number(port) } : null;
}

/** The layout of an element whose set has no `create` line in the text (a grepped excerpt), read from its shape. */
function guessParts(parts: readonly string[]): Part[] {
  return parts.map((p) => (addressOrNet(p) !== null ? 'ip' : protoPort(p) !== null ? 'port' : 'other'));
}

interface ElementFields {
  address: string | null;
  protocol: string | null;
  port: number | null;
  second: string | null;
}

function readElement(element: string, known: KnownSet | undefined): ElementFields | string {
  const fields: ElementFields = { address: null, protocol: null, port: null, second: null };
  const layout = known === undefined ? null : known.parts;
  // A set of an unknown method: keep the element as printed.
  if (known !== undefined && layout === null) return fields;
  // list:set elements are set names, which may hold a comma.
  const pieces = layout !== null && layout.length === 1 && layout[0] === 'other' ? [element] : element.split(',');
  const parts = layout ?? guessParts(pieces);
  if (pieces.length !== parts.length) return `element \`${element}\` has ${pieces.length} part(s) where the set's type has ${parts.length}`;
  for (const [i, part] of parts.entries()) {
    const piece = pieces[i] ?? '';
    switch (part) {
      case 'ip':
      case 'net': {
        const a = addressOrNet(piece);
        if (a === null) return `\`${piece}\` in element \`${element}\` is not an address`;
        if (fields.address === null) fields.address = a;
        else fields.second ??= a;
        break;
      }
      case 'port': {
        if (fields.port !== null || fields.protocol !== null) break;
        const pp = protoPort(piece);
        if (pp === null) return `\`${piece}\` in element \`${element}\` is not a port or proto:port`;
        fields.protocol = pp.protocol;
        fields.port = pp.port;
        break;
      }
      case 'other':
        // mac, iface, mark, a list:set member: nothing of these is read.
        break;
    }
  }
  return fields;
}

function readCreate(tokens: readonly string[], raw: string): IpsetSet | string {
  const [, name, type, ...rest] = tokens;
  if (name === undefined || type === undefined) return '`create` without a set name and type';
  let family: IpsetSet['family'] = null;
  const options: Record<string, string> = {};
  const flags: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i] ?? '';
    const value = rest[i + 1];
    // A keyword ipset does not document yet: a value follows unless the next token is itself a keyword.
    if (CREATE_FLAGS.has(key) || value === undefined || CREATE_FLAGS.has(value)) { flags.push(key); continue; }
    i++;
    if (key === 'family') {
      if (value !== 'inet' && value !== 'inet6') return `family \`${value}\` is neither inet nor inet6`;
      family = value;
      continue;
    }
    options[key] = value;
  }
  return { kind: 'set', name, type, family, options, flags, raw };
}

function readAdd(tokens: readonly string[], raw: string, sets: ReadonlyMap<string, KnownSet>): { member: IpsetMember; unknown: string[] } | string {
  const [, set, element, ...rest] = tokens;
  if (set === undefined || element === undefined) return '`add` without a set name and element';
  const fields = readElement(element, sets.get(set));
  if (typeof fields === 'string') return fields;
  let nomatch = false;
  let comment: string | null = null;
  let timeout: number | null = null;
  let packets: number | null = null;
  let bytes: number | null = null;
  const unknown: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i] ?? '';
    if (key === NOMATCH) { nomatch = true; continue; }
    if (!ELEMENT_OPTIONS.has(key)) { unknown.push(key); continue; }
    const value = rest[++i];
    if (value === undefined) return `\`${key}\` has no value (a cut line?)`;
    const numeric = key === 'timeout' || key === 'packets' || key === 'bytes';
    if (numeric && !DIGITS.test(value)) return `\`${key} ${value}\` is not a number`;
    if (key === 'timeout') timeout = Number(value);
    else if (key === 'packets') packets = Number(value);
    else if (key === 'bytes') bytes = Number(value);
    else if (key === 'comment') comment = value;
  }
  return {
    member: { kind: 'member', set, member: element, ...fields, nomatch, comment, timeout, packets, bytes, raw },
    unknown,
  };
}

/** Parses `ipset save` output into one record per set and one per element. */
export function parseIpset(text: string): ParseResult<IpsetRecord> {
  const records: IpsetRecord[] = [];
  const problems: Problem[] = [];
  const sets = new Map<string, KnownSet>();
  /** Inside a listing in another output format, reported once at its start. */
  let skipping = false;
  const lines = text.split('\n');
  for (let li = 0; li < lines.length; li++) {
    let raw = lines[li] ?? '';
    if (raw.endsWith('\r')) raw = raw.slice(0, -1);
    const line = raw.trim();
    if (line === '') continue;
    const word = line.slice(0, line.search(/\s|$/));
    if (word !== 'create' && word !== 'add') {
      if (skipping) continue;
      if (LIST_HEADER.test(line)) { problems.push(at(li, raw, LIST_OUTPUT)); skipping = true; continue; }
      if (line.startsWith('<')) { problems.push(at(li, raw, XML_OUTPUT)); skipping = true; continue; }
      if (line === '[' || line.startsWith('{')) { problems.push(at(li, raw, JSON_OUTPUT)); skipping = true; continue; }
      problems.push(at(li, raw, NOT_SAVE));
      continue;
    }
    skipping = false;
    const tokens = tokenize(line);
    if (tokens === null) { problems.push(at(li, raw, 'unterminated quote (a cut line?)')); continue; }
    if (word === 'create') {
      const set = readCreate(tokens, raw);
      if (typeof set === 'string') { problems.push(at(li, raw, set)); continue; }
      sets.set(set.name, { parts: partsOfType(set.type) });
      records.push(set);
      continue;
    }
    const added = readAdd(tokens, raw, sets);
    if (typeof added === 'string') { problems.push(at(li, raw, added)); continue; }
    if (added.unknown.length > 0) problems.push(at(li, raw, `element option(s) ${added.unknown.map((u) => `\`${u}\``).join(', ')} not known (ignored)`));
    records.push(added.member);
  }
  return { records, problems };
}

const at = (index: number, text: string, reason: string): Problem => ({ line: index + 1, text, reason });
