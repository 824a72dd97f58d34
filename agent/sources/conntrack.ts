// Conntrack entries, in every form the kernel and conntrack-tools print them
// (FORMATS.md §3):
// - /proc/net/nf_conntrack: ct_seq_show() in nf_conntrack_standalone.c,
//   `ipv4     2 tcp      6 117 SYN_SENT src=… … zone=0 use=2`, IPv6 in full;
// - `conntrack -L [-o extended]` and `conntrack -E`: libnetfilter_conntrack
//   __snprintf_conntrack_default() (snprintf_default.c), IPv6 compressed, the
//   `ipv4     2` columns only with `-o extended`, `[NEW]`-style event tags
//   with -E;
// - the legacy /proc/net/ip_conntrack, which is the `-L` shape.
// The agent parses procfs with up to 250k lines every second, so a line is
// read by one hand-written scanner over char codes: no regex and no split per
// token, and the only strings made are the ones the record keeps.
import { canonicalIp } from '../../contract/address.ts';
import type { ConntrackEntry, ConntrackTuple } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

const SPACE = 0x20;
const TAB = 0x09;
const CR = 0x0d;
const LBRACKET = 0x5b;
const DOT = 0x2e;
const COLON = 0x3a;
const MINUS = 0x2d;
const ZERO = 0x30;
const NINE = 0x39;
const EQUALS = 0x3d;

/** Where the scanner stands: the current token is line[start, end), `pos` is past it. */
interface Cursor {
  readonly line: string;
  /** The line has a TAB or CR somewhere, so a token ends at more than a space. */
  readonly otherBlanks: boolean;
  pos: number;
  start: number;
  end: number;
}

const isBlank = (c: number): boolean => c === SPACE || c === TAB || c === CR;

function cursorOn(line: string): Cursor {
  // Tokens are separated by spaces in both printers; a TAB appears only after
  // an -E timestamp, a CR only in a CRLF copy. Lines without either take the
  // indexOf fast path below.
  const otherBlanks = line.charCodeAt(line.length - 1) === CR || line.includes('\t');
  return { line, otherBlanks, pos: 0, start: 0, end: 0 };
}

/** Moves to the next blank-separated token; false at the end of the line. */
function next(c: Cursor): boolean {
  const { line } = c;
  const n = line.length;
  let i = c.pos;
  while (i < n && isBlank(line.charCodeAt(i))) i++;
  if (i >= n) {
    c.start = c.end = c.pos = n;
    return false;
  }
  const start = i;
  if (c.otherBlanks) {
    while (i < n && !isBlank(line.charCodeAt(i))) i++;
  } else {
    i = line.indexOf(' ', i);
    if (i < 0) i = n;
  }
  c.start = start;
  c.end = i;
  c.pos = i;
  return true;
}

const token = (c: Cursor): string => c.line.slice(c.start, c.end);
/** line[at…] begins with `word` (a char loop: startsWith with a position is not inlined and showed in profiles). */
function matchesAt(line: string, at: number, word: string): boolean {
  for (let k = 0; k < word.length; k++) if (line.charCodeAt(at + k) !== word.charCodeAt(k)) return false;
  return true;
}
const is = (c: Cursor, word: string): boolean => c.end - c.start === word.length && matchesAt(c.line, c.start, word);
const hasKey = (c: Cursor, key: string): boolean => c.line.charCodeAt(c.start + key.length) === EQUALS && matchesAt(c.line, c.start, key);
const quote = (c: Cursor): string => JSON.stringify(token(c));

/** Decimal digits in line[from, to) as a number, or -1. */
function readUint(line: string, from: number, to: number): number {
  if (from >= to || to - from > 15) return -1;
  let v = 0;
  for (let i = from; i < to; i++) {
    const d = line.charCodeAt(i) - ZERO;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

/** The value of a `key=N` token, or -1. */
const uintValue = (c: Cursor, key: string): number => readUint(c.line, c.start + key.length + 1, c.end);

/**
 * A dotted quad exactly as inet_ntoa / %pI4 print it (no leading zeros,
 * each part ≤ 255), checked without a regex: it is the common case, four
 * times per line.
 */
function isDottedQuad(line: string, from: number, to: number): boolean {
  let parts = 0;
  let digits = 0;
  let value = 0;
  let lead = 0;
  for (let i = from; i <= to; i++) {
    const ch = i === to ? DOT : line.charCodeAt(i);
    if (ch === DOT) {
      if (digits === 0 || value > 255 || (digits > 1 && lead === ZERO)) return false;
      parts++;
      digits = 0;
      value = 0;
      continue;
    }
    if (ch < ZERO || ch > NINE || digits === 3) return false;
    if (digits === 0) lead = ch;
    value = value * 10 + (ch - ZERO);
    digits++;
  }
  return parts === 4;
}

function hexDigit(ch: number): number {
  if (ch >= ZERO && ch <= NINE) return ch - ZERO;
  if (ch >= 0x61 && ch <= 0x66) return ch - 0x57;
  return -1;
}

/**
 * RFC 5952 text (what canonicalIp() returns) of an address in the full form
 * the kernel's %pI6 prints: 8 groups of 4 lower-case hex digits. Returns null
 * for any other form. canonicalIp() costs several microseconds an address
 * (split, map, regex); on an IPv6 cluster that would dominate the parse.
 */
export function compressFullIPv6(text: string, from = 0, to = text.length): string | null {
  if (to - from !== 39) return null;
  const groups = [0, 0, 0, 0, 0, 0, 0, 0];
  for (let g = 0; g < 8; g++) {
    const at = from + g * 5;
    if (g > 0 && text.charCodeAt(at - 1) !== COLON) return null;
    let v = 0;
    for (let k = 0; k < 4; k++) {
      const h = hexDigit(text.charCodeAt(at + k));
      if (h < 0) return null;
      v = v * 16 + h;
    }
    groups[g] = v;
  }
  // The longest run of two or more zero groups becomes `::`, the first on a tie.
  let bestStart = -1;
  let bestLen = 1;
  for (let g = 0; g < 8; ) {
    if (groups[g] !== 0) { g++; continue; }
    let e = g;
    while (e < 8 && groups[e] === 0) e++;
    if (e - g > bestLen) { bestStart = g; bestLen = e - g; }
    g = e;
  }
  let out = '';
  let sep = false;
  for (let g = 0; g < 8; g++) {
    if (g === bestStart) {
      out += '::';
      sep = false;
      g += bestLen - 1;
      continue;
    }
    if (sep) out += ':';
    out += (groups[g] ?? 0).toString(16);
    sep = true;
  }
  return out;
}

/** Canonical text of the address after `key=`, or null. */
function addressValue(c: Cursor, key: string): string | null {
  const from = c.start + key.length + 1;
  if (isDottedQuad(c.line, from, c.end)) return c.line.slice(from, c.end);
  // IPv6: procfs prints %pI6 in full, conntrack -L compresses it (FORMATS.md §7).
  const colon = c.line.indexOf(':', from);
  if (colon < 0 || colon >= c.end) return null;
  return compressFullIPv6(c.line, from, c.end) ?? canonicalIp(c.line.slice(from, c.end));
}

/**
 * One direction's tuple, `src=A dst=B` then the protocol part (print_tuple()
 * in the kernel, __snprintf_address/__snprintf_proto in libnetfilter_conntrack):
 * `sport= dport=` for tcp/udp/udplite/sctp/dccp, `type= code= id=` for
 * icmp/icmpv6, `srckey= dstkey=` for gre, nothing for an unknown protocol.
 * Keys repeat in the two tuples, so they are read positionally (§3.3).
 */
function readTuple(c: Cursor, which: string): ConntrackTuple | string {
  if (!next(c)) return `${which} tuple missing (line cut short?)`;
  if (!hasKey(c, 'src')) return `expected src= of the ${which} tuple, found ${quote(c)}`;
  const src = addressValue(c, 'src');
  if (src === null) return `${which} src= is not an IP address: ${quote(c)}`;
  if (!next(c)) return `${which} tuple cut after src=`;
  if (!hasKey(c, 'dst')) return `expected dst= after src= in the ${which} tuple, found ${quote(c)}`;
  const dst = addressValue(c, 'dst');
  if (dst === null) return `${which} dst= is not an IP address: ${quote(c)}`;

  const back = c.pos;
  if (!next(c)) return { src, dst, sport: null, dport: null, extra: null };
  if (hasKey(c, 'sport')) {
    const sport = uintValue(c, 'sport');
    if (sport < 0 || sport > 65535) return `${which} sport= is not a port: ${quote(c)}`;
    if (!next(c) || !hasKey(c, 'dport')) return `${which} tuple has sport= but no dport= (line cut short?)`;
    const dport = uintValue(c, 'dport');
    if (dport < 0 || dport > 65535) return `${which} dport= is not a port: ${quote(c)}`;
    return { src, dst, sport, dport, extra: null };
  }
  if (hasKey(c, 'type')) {
    const from = c.start;
    if (uintValue(c, 'type') < 0) return `${which} type= is not a number: ${quote(c)}`;
    if (!next(c) || !hasKey(c, 'code') || uintValue(c, 'code') < 0) return `${which} icmp tuple has type= but no code= (line cut short?)`;
    let to = c.end;
    const afterCode = c.pos;
    // Both printers always add id= to an icmp tuple; a following id= is still
    // read as the tuple's only when it sits right after code= (-o id prints
    // another id= at the end of the line).
    if (next(c) && hasKey(c, 'id') && uintValue(c, 'id') >= 0) to = c.end;
    else c.pos = afterCode;
    return { src, dst, sport: null, dport: null, extra: c.line.slice(from, to) };
  }
  if (hasKey(c, 'srckey')) {
    const from = c.start;
    if (!next(c) || !hasKey(c, 'dstkey')) return `${which} gre tuple has srckey= but no dstkey= (line cut short?)`;
    return { src, dst, sport: null, dport: null, extra: c.line.slice(from, c.end) };
  }
  c.pos = back;
  return { src, dst, sport: null, dport: null, extra: null };
}

/** `packets=N` followed by `bytes=N` (seq_print_acct(), nf_conntrack_acct=1). */
function readCounters(c: Cursor): string | null {
  if (uintValue(c, 'packets') < 0) return `packets= is not a number: ${quote(c)}`;
  if (!next(c) || !hasKey(c, 'bytes') || uintValue(c, 'bytes') < 0) return 'packets= without bytes= (line cut short?)';
  return null;
}

const EVENT_TAGS = new Set(['[NEW]', '[UPDATE]', '[DESTROY]']);

/** `[1591610302.123456]`: the event time `conntrack -E -o timestamp` prints first. */
function isEventTime(line: string, from: number, to: number): boolean {
  let dots = 0;
  for (let i = from + 1; i < to - 1; i++) {
    const ch = line.charCodeAt(i);
    if (ch === DOT) dots++;
    else if (ch < ZERO || ch > NINE) return false;
  }
  return to - from > 2 && dots <= 1;
}

// The names l4proto_name() and the tcp/sctp/dccp state tables print
// (FORMATS.md §3.1). Returning the shared constant instead of a fresh slice
// saves two small strings per entry, most of a 250k-line table's garbage.
const PROTO_NAMES: readonly string[] = ['tcp', 'udp', 'icmp', 'icmpv6', 'sctp', 'dccp', 'gre', 'udplite', 'unknown'];
const STATE_NAMES: readonly string[] = [
  'ESTABLISHED', 'TIME_WAIT', 'SYN_SENT', 'SYN_RECV', 'FIN_WAIT', 'CLOSE_WAIT', 'LAST_ACK', 'CLOSE', 'NONE', 'SYN_SENT2',
];
function known(c: Cursor, names: readonly string[]): string {
  for (const name of names) if (is(c, name)) return name;
  return token(c);
}

const isLower = (ch: number): boolean => ch >= 0x61 && ch <= 0x7a;
const isUpper = (ch: number): boolean => ch >= 0x41 && ch <= 0x5a;
const isDigit = (ch: number): boolean => ch >= ZERO && ch <= NINE;

/** A protocol name as l4proto_name()/proto2str() print it: `tcp`, `icmpv6`, `unknown`. */
function isProtoName(line: string, from: number, to: number): boolean {
  if (from >= to || !isLower(line.charCodeAt(from))) return false;
  for (let i = from + 1; i < to; i++) {
    const ch = line.charCodeAt(i);
    if (!isLower(ch) && !isDigit(ch)) return false;
  }
  return true;
}

/** A state name from the tcp/sctp/dccp tables: `ESTABLISHED`, `SYN_SENT2`, `COOKIE_WAIT`. */
function isStateName(line: string, from: number, to: number): boolean {
  if (!isUpper(line.charCodeAt(from))) return false;
  for (let i = from + 1; i < to; i++) {
    const ch = line.charCodeAt(i);
    if (!isUpper(ch) && !isDigit(ch) && ch !== 0x5f) return false;
  }
  return true;
}

/** Where the `=` of a `key=value` token with a lower-case key (`delta-time`, a future attribute) is, or -1. */
function keyValueEquals(line: string, from: number, to: number): number {
  if (!isLower(line.charCodeAt(from))) return -1;
  for (let i = from + 1; i < to; i++) {
    const ch = line.charCodeAt(i);
    if (ch === EQUALS) return i + 1 < to ? i : -1;
    if (!isLower(ch) && !isDigit(ch) && ch !== MINUS && ch !== 0x5f) return -1;
  }
  return -1;
}

/**
 * The numeric trailer keys (§3.1 items 10–14, §3.2 items 11–14); a value
 * that is not a number means the line was cut or edited. String-valued keys
 * (secctx, helper, labels) and keys newer than this parser are let through.
 */
const NUMERIC_KEYS: readonly string[] = ['mark', 'zone', 'secmark', 'delta-time', 'use', 'id', 'zone-orig', 'zone-reply'];
function numericKeyAt(line: string, from: number, eq: number): string | undefined {
  for (const key of NUMERIC_KEYS) if (eq - from === key.length && matchesAt(line, from, key)) return key;
  return undefined;
}

/**
 * Parses one conntrack line. The trailer conntrack-tools writes to stderr
 * (`conntrack v1.4.6 (conntrack-tools): 6 flow entries have been shown.`) is
 * not an entry: it comes back as an error here, and parseConntrack() skips it
 * (see isConntrackToolsMessage).
 */
export function parseConntrackLine(line: string): ConntrackEntry | { error: string } {
  const c = cursorOn(line);
  if (!next(c)) return { error: 'empty line' };

  // `conntrack -E` prefixes `%9s ` ([NEW], [UPDATE], [DESTROY]), and with
  // -o timestamp the event time before that.
  while (line.charCodeAt(c.start) === LBRACKET) {
    const close = line.indexOf(']', c.start);
    if (close < 0 || close + 1 !== c.end) return { error: `unknown tag ${quote(c)} before the protocol` };
    if (!EVENT_TAGS.has(token(c)) && !isEventTime(line, c.start, c.end)) return { error: `unknown tag ${quote(c)} before the protocol` };
    if (!next(c)) return { error: 'event tag with no entry after it' };
  }

  // `%-8s %u ` layer 3 name and number: always in procfs, with -o extended.
  let family: 'ipv4' | 'ipv6' | null = null;
  if (is(c, 'ipv4') || is(c, 'ipv6')) {
    family = is(c, 'ipv4') ? 'ipv4' : 'ipv6';
    if (!next(c)) return { error: `${family} with nothing after it (line cut short?)` };
    const l3num = readUint(line, c.start, c.end);
    if (l3num !== (family === 'ipv4' ? 2 : 10)) return { error: `expected ${family === 'ipv4' ? 2 : 10} after ${family}, found ${quote(c)}` };
    if (!next(c)) return { error: 'no protocol after the layer 3 columns (line cut short?)' };
  }

  if (!isProtoName(line, c.start, c.end)) {
    if (readUint(line, c.start, c.end) >= 0) {
      return { error: `starts with the number ${quote(c)} where the protocol name belongs: a half entry, cut at the start` };
    }
    return { error: `expected a protocol name such as tcp, found ${quote(c)} (line cut at the start, or not conntrack output)` };
  }
  const proto = known(c, PROTO_NAMES);
  if (!next(c)) return { error: `${proto} with no protocol number (line cut short?)` };
  const protoNum = readUint(line, c.start, c.end);
  if (protoNum < 0 || protoNum > 255) return { error: `expected the protocol number after ${proto}, found ${quote(c)}` };

  // Timeout, then state: each absent on offloaded flows (§3.1 item 2,
  // §3.2 item 4), the state also on stateless protocols.
  if (!next(c)) return { error: 'no tuple after the protocol (line cut short?)' };
  let timeout: number | null = null;
  if (isDigit(line.charCodeAt(c.start)) || line.charCodeAt(c.start) === MINUS) {
    // `%ld` is signed: a minus sign is read, not taken for garbage.
    const negative = line.charCodeAt(c.start) === MINUS;
    const v = readUint(line, negative ? c.start + 1 : c.start, c.end);
    if (v < 0) return { error: `timeout is not a number: ${quote(c)}` };
    timeout = negative ? -v : v;
    if (!next(c)) return { error: 'no tuple after the timeout (line cut short?)' };
  }
  let state: string | null = null;
  if (isStateName(line, c.start, c.end)) {
    state = known(c, STATE_NAMES);
    if (!next(c)) return { error: 'no tuple after the state (line cut short?)' };
  } else if (hasKey(c, 'timeout')) {
    // GRE's print_conntrack hook in procfs, where other protocols print a
    // state: `timeout=%u, stream_timeout=%u ` (gre_print_conntrack() in
    // nf_conntrack_proto_gre.c; not in FORMATS.md §3.1).
    if (!next(c) || !hasKey(c, 'stream_timeout')) return { error: 'gre timeout= without stream_timeout= (line cut short?)' };
    if (!next(c)) return { error: 'no tuple after the gre timeouts (line cut short?)' };
  }
  c.pos = c.start; // the tuple reader takes its first token itself

  const orig = readTuple(c, 'original');
  if (typeof orig === 'string') return { error: orig };
  const addrFamily = orig.src.includes(':') ? 'ipv6' : 'ipv4';
  if (family !== null && family !== addrFamily) return { error: `${family} entry with ${addrFamily} addresses` };

  // Between the tuples: zone-orig=, the original counters, [UNREPLIED].
  let unreplied = false;
  let zoneOrig = -1;
  for (;;) {
    const back = c.pos;
    if (!next(c)) return { error: 'reply tuple missing (line cut short?)' };
    if (hasKey(c, 'src')) {
      c.pos = back;
      break;
    }
    if (is(c, '[UNREPLIED]')) unreplied = true;
    else if (hasKey(c, 'packets')) {
      const bad = readCounters(c);
      if (bad !== null) return { error: bad };
    } else if (hasKey(c, 'zone-orig')) {
      zoneOrig = uintValue(c, 'zone-orig');
      if (zoneOrig < 0) return { error: `zone-orig= is not a number: ${quote(c)}` };
    } else return { error: `unexpected ${quote(c)} between the original and reply tuples` };
  }

  const reply = readTuple(c, 'reply');
  if (typeof reply === 'string') return { error: reply };
  if ((orig.sport === null) !== (reply.sport === null) || (orig.extra === null) !== (reply.extra === null)) {
    return { error: 'reply tuple is shorter than the original one (line cut short?)' };
  }

  // After the reply tuple: zone-reply=, counters, one flag, then key=value
  // pairs (mark, secmark, secctx, zone, delta-time, helper, use, id, labels).
  let assured = false;
  let offload: ConntrackEntry['offload'] = 'none';
  let mark: number | null = null;
  let zone = -1;
  let zoneReply = -1;
  while (next(c)) {
    const first = line.charCodeAt(c.start);
    if (first === LBRACKET) {
      if (is(c, '[ASSURED]')) assured = true;
      else if (is(c, '[OFFLOAD]')) offload = 'sw';
      else if (is(c, '[HW_OFFLOAD]')) offload = 'hw';
      // `conntrack -E` marks events a program caused, then `portid=`
      // and `progname=` (event_cb() in conntrack.c).
      else if (is(c, '[USERSPACE]')) continue;
      else if (line.startsWith('[start=', c.start) || line.startsWith('[stop=', c.start)) {
        // -o timestamp prints ctime() text, which has blanks: skip to its `]`.
        const close = line.indexOf(']', c.start);
        if (close < 0) return { error: `${quote(c)} is never closed (line cut short?)` };
        c.pos = close + 1;
      } else return { error: `unknown flag ${quote(c)}` };
      continue;
    }
    if (hasKey(c, 'packets')) {
      const bad = readCounters(c);
      if (bad !== null) return { error: bad };
      continue;
    }
    const eq = keyValueEquals(line, c.start, c.end);
    if (eq < 0) return { error: `unexpected ${quote(c)} after the reply tuple` };
    const key = numericKeyAt(line, c.start, eq);
    if (key === undefined) continue;
    const v = readUint(line, eq + 1, c.end);
    if (v < 0) return { error: `${key}= is not a number: ${quote(c)}` };
    if (key === 'mark') mark = v;
    else if (key === 'zone') zone = v;
    else if (key === 'zone-reply') zoneReply = v;
    else if (key === 'zone-orig') zoneOrig = v;
  }

  return {
    family: family ?? addrFamily,
    proto,
    protoNum,
    timeout,
    state,
    orig,
    reply,
    unreplied,
    assured,
    offload,
    mark,
    // ct_show_zone() prints exactly one of zone=, zone-orig=, zone-reply=
    // (the zone's direction decides); none at all means the default zone 0,
    // which `conntrack -L` omits and procfs prints as zone=0.
    zone: zone >= 0 ? zone : zoneOrig >= 0 ? zoneOrig : zoneReply >= 0 ? zoneReply : 0,
    raw: line,
  };
}

/**
 * conntrack.c exit_msg[] and its error messages: `conntrack v1.4.6
 * (conntrack-tools): 6 flow entries have been shown.` or `… Operation
 * failed: …`. They go to stderr, so they show up only when a capture merged
 * the two streams, and then possibly before the entries (FORMATS.md §3.2).
 */
export function isConntrackToolsMessage(line: string): boolean {
  return line.startsWith('conntrack v') && line.includes(' (conntrack-tools): ');
}

function isBlankLine(line: string): boolean {
  for (let i = 0; i < line.length; i++) if (!isBlank(line.charCodeAt(i))) return false;
  return true;
}

export function parseConntrack(text: string): ParseResult<ConntrackEntry> {
  const records: ConntrackEntry[] = [];
  const problems: Problem[] = [];
  let start = 0;
  let lineNo = 0;
  const n = text.length;
  while (start < n) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = n;
    lineNo++;
    // A CRLF capture: the CR belongs to the line break, not to the entry.
    const line = text.slice(start, end > start && text.charCodeAt(end - 1) === CR ? end - 1 : end);
    start = end + 1;
    if (isBlankLine(line) || isConntrackToolsMessage(line)) continue;
    const parsed = parseConntrackLine(line);
    if ('error' in parsed) problems.push({ line: lineNo, text: line, reason: parsed.error });
    else records.push(parsed);
  }
  return { records, problems };
}
