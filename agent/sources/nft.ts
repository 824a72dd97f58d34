// `nft -j list ruleset`: one JSON document, `{"nftables": [ … ]}`, each item an
// object with one key naming its kind (libnftables-json(5); nftables
// src/json.c). The first item is `metainfo`; then tables, chains, rules,
// sets and maps. kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go)
// keeps Services as elements of verdict maps (`service-ips`,
// `service-nodeports`: `10.96.0.10 . udp . 53 : goto service-…`), so every
// element becomes a record of its own: a Service appearing or vanishing is
// then one added or removed record, not a change to a map holding thousands.
import type { NftObject } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: Json | undefined): string | null => (typeof v === 'string' ? v : null);
const int = (v: Json | undefined): number | null => (typeof v === 'number' && Number.isSafeInteger(v) ? v : null);

/** Kinds we make records of; `metainfo` is the tool's header. */
const KINDS = new Set(['table', 'chain', 'rule', 'set', 'map']);

// Renderings nest as deep as the JSON does; a hostile document must not
// exhaust the stack, and no real ruleset nests this deep.
const MAX_DEPTH = 48;

export function parseNft(text: string): ParseResult<NftObject> {
  const records: NftObject[] = [];
  const problems: Problem[] = [];
  if (text.trim() === '') return { records, problems };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    const line = errorLine(text, err);
    return { records, problems: [{ line, text: lineText(text, line), reason: `not valid JSON: ${errorMessage(err)}` }] };
  }
  const items = isObject(doc) ? doc['nftables'] : undefined;
  if (!Array.isArray(items)) {
    return { records, problems: [{ line: 1, text: lineText(text, 1), reason: 'JSON without an `nftables` array (not `nft -j list …` output)' }] };
  }
  const lines = itemLines(text, items.length);
  for (let i = 0; i < items.length; i++) {
    const item = items[i];
    const line = lines[i] ?? 1;
    // The document is usually one line of megabytes: a problem quotes its object, not its line.
    const problem = (reason: string) => problems.push({ line, text: clip(safeStringify(item)), reason });
    const keys = isObject(item) ? Object.keys(item) : [];
    const kind = keys[0];
    if (!isObject(item) || keys.length !== 1 || kind === undefined) { problem('not an nft object (expected one key naming its kind)'); continue; }
    if (kind === 'metainfo') continue;
    const body = item[kind];
    if (!KINDS.has(kind)) { problem(`nft object kind \`${kind}\` is not tracked`); continue; }
    if (!isObject(body)) { problem(`\`${kind}\` is not an object`); continue; }
    try {
      const reason = readObject(kind, body, records);
      if (reason !== null) problem(reason);
    } catch (err) {
      // Only a document nested past the stack gets here (JSON.stringify of
      // `raw` recurses); a parser that threw would lose the whole sample.
      problem(`could not read this \`${kind}\`: ${errorMessage(err)}`);
    }
  }
  return { records, problems };
}

/** Appends the records of one object; returns why it could not, or null. */
function readObject(kind: string, o: JsonObject, out: NftObject[]): string | null {
  const family = str(o['family']);
  const handle = int(o['handle']);
  if (family === null) return `\`${kind}\` without a family`;
  if (kind === 'table') {
    const name = str(o['name']);
    if (name === null) return '`table` without a name';
    out.push({ kind: 'table', family, table: name, name: null, handle, text: `table ${family} ${name}`, packets: null, bytes: null, raw: compact({ table: o }) });
    return null;
  }
  const table = str(o['table']);
  if (table === null) return `\`${kind}\` without a table`;
  if (kind === 'chain') {
    const name = str(o['name']);
    if (name === null) return '`chain` without a name';
    out.push({ kind: 'chain', family, table, name, handle, text: renderChain(name, o), packets: null, bytes: null, raw: compact({ chain: o }) });
    return null;
  }
  if (kind === 'rule') {
    const chain = str(o['chain']);
    if (chain === null) return '`rule` without a chain';
    const expr = Array.isArray(o['expr']) ? o['expr'] : [];
    const counter = expr.map((e) => (isObject(e) ? e['counter'] : undefined)).find(isObject);
    const comment = str(o['comment']);
    out.push({
      kind: 'rule', family, table, name: chain, handle,
      text: comment ?? expr.map((e) => render(e, 0)).join(' '),
      packets: counter === undefined ? null : num(counter['packets']),
      bytes: counter === undefined ? null : num(counter['bytes']),
      raw: compact({ rule: o }),
    });
    return null;
  }
  // set or map
  const name = str(o['name']);
  if (name === null) return `\`${kind}\` without a name`;
  const kindOf = kind === 'map' ? 'map' : 'set';
  // The elements are records of their own, so the set's raw leaves them out:
  // otherwise adding one Service would also change the map record, and a
  // 10k-element map would be resent whole on every diff.
  const { elem, ...decl } = o;
  out.push({ kind: kindOf, family, table, name, handle, text: renderSetDecl(kindOf, name, decl), packets: null, bytes: null, raw: compact({ [kind]: decl }) });
  if (Array.isArray(elem)) {
    for (const e of elem) {
      const rendering = renderElement(e);
      const counter = elementCounter(e);
      out.push({
        kind: 'element', family, table, name, handle: null, text: rendering,
        packets: counter === null ? null : num(counter['packets']),
        bytes: counter === null ? null : num(counter['bytes']),
        raw: rendering,
      });
    }
  }
  return null;
}

const num = (v: Json | undefined): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);

function compact(v: Json): string {
  return JSON.stringify(v);
}

/** For quoting an item in a problem: JSON.stringify recurses, and a hostile document can nest past the stack. */
function safeStringify(v: unknown): string {
  try {
    return JSON.stringify(v) ?? String(v);
  } catch {
    return '(too deeply nested to quote)';
  }
}

/** `chain nat-output { type nat hook output priority -100; policy accept; }`, as `nft list` writes it. */
function renderChain(name: string, o: JsonObject): string {
  const parts: string[] = [];
  const type = str(o['type']);
  const hook = str(o['hook']);
  if (type !== null && hook !== null) {
    const dev = str(o['dev']);
    parts.push(`type ${type} hook ${hook}${dev === null ? '' : ` device ${dev}`} priority ${scalar(o['prio'])};`);
    const policy = str(o['policy']);
    if (policy !== null) parts.push(`policy ${policy};`);
  }
  const comment = str(o['comment']);
  if (comment !== null) parts.push(`comment ${quote(comment)};`);
  return parts.length === 0 ? `chain ${name}` : `chain ${name} { ${parts.join(' ')} }`;
}

/** `map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; comment "…"; }` */
function renderSetDecl(kind: 'set' | 'map', name: string, o: JsonObject): string {
  const typeOf = (v: Json | undefined): string => (Array.isArray(v) ? v.map((t) => scalar(t)).join(' . ') : scalar(v));
  const parts: string[] = [];
  const data = o['map'];
  parts.push(`type ${typeOf(o['type'])}${kind === 'map' && data !== undefined ? ` : ${typeOf(data)}` : ''};`);
  const flags = o['flags'];
  if (Array.isArray(flags) && flags.length > 0) parts.push(`flags ${flags.map((f) => scalar(f)).join(',')};`);
  else if (typeof flags === 'string') parts.push(`flags ${flags};`);
  if (o['timeout'] !== undefined) parts.push(`timeout ${scalar(o['timeout'])}s;`);
  const comment = str(o['comment']);
  if (comment !== null) parts.push(`comment ${quote(comment)};`);
  return `${kind} ${name} { ${parts.join(' ')} }`;
}

/**
 * One set or map element as `nft list` writes it: `10.96.0.10 . udp . 53 :
 * goto service-…`, `10.96.100.20 . tcp . 80 comment "ns/svc:p" : goto
 * reject-chain`. Its `expires` countdown and counter are left out: they move
 * on their own, and the rendering is the element's identity.
 */
function renderElement(e: Json): string {
  if (Array.isArray(e) && e.length === 2) return `${renderElementKey(e[0] ?? null)} : ${render(e[1] ?? null, 0)}`;
  return renderElementKey(e);
}

function renderElementKey(e: Json): string {
  if (!isObject(e) || !isObject(e['elem'])) return render(e, 0);
  const el = e['elem'];
  let s = render(el['val'] ?? null, 0);
  if (el['timeout'] !== undefined) s += ` timeout ${scalar(el['timeout'])}s`;
  const comment = str(el['comment']);
  if (comment !== null) s += ` comment ${quote(comment)}`;
  return s;
}

function elementCounter(e: Json): JsonObject | null {
  const key = Array.isArray(e) ? e[0] : e;
  if (!isObject(key) || !isObject(key['elem'])) return null;
  const c = key['elem']['counter'];
  return isObject(c) ? c : null;
}

const VERDICTS = new Set(['accept', 'drop', 'continue', 'return', 'queue']);
const BINOPS = new Set(['&', '|', '^', '<<', '>>']);

/**
 * A short nft-syntax rendering of an expression or statement (after
 * libnftables-json(5)); enough to read a rule without a comment. Counter
 * values are left out so the text only changes when the rule does.
 */
function render(e: Json, depth: number): string {
  if (depth > MAX_DEPTH) return '…';
  if (e === null) return '';
  if (typeof e !== 'object') return scalar(e);
  const d = depth + 1;
  if (Array.isArray(e)) return e.map((x) => render(x, d)).join(', ');
  const keys = Object.keys(e);
  const k = keys[0];
  if (keys.length !== 1 || k === undefined) return compact(e);
  const v = e[k] ?? null;
  const o = isObject(v) ? v : {};
  const r = (x: Json | undefined) => render(x ?? null, d);
  if (VERDICTS.has(k)) return k;
  if (BINOPS.has(k) && Array.isArray(v)) return v.map((x) => render(x, d)).join(` ${k} `);
  switch (k) {
    case 'match': {
      const op = str(o['op']) ?? '==';
      // nft omits the implicit operators when listing, except after a bitwise
      // expression (`meta mark & 0x4000 == 0`).
      const left = o['left'];
      const afterBinop = isObject(left) && Object.keys(left).some((x) => BINOPS.has(x));
      const shown = (op === '==' && !afterBinop) || op === 'in' ? '' : ` ${op}`;
      return `${r(o['left'])}${shown} ${r(o['right'])}`;
    }
    case 'payload':
      return o['protocol'] !== undefined
        ? `${r(o['protocol'])} ${r(o['field'])}`
        : `@${r(o['base'])},${r(o['offset'])},${r(o['len'])}`;
    case 'meta': return `meta ${r(o['key'])}`;
    case 'ct': return `ct ${o['dir'] === undefined ? '' : `${r(o['dir'])} `}${r(o['key'])}`;
    case 'fib': return `fib ${Array.isArray(o['flags']) ? o['flags'].map((x) => render(x, d)).join(' . ') : r(o['flags'])} ${r(o['result'])}`;
    case 'prefix': return `${r(o['addr'])}/${r(o['len'])}`;
    case 'range': return Array.isArray(v) ? v.map((x) => render(x, d)).join('-') : compact(v);
    case 'concat': return Array.isArray(v) ? v.map((x) => render(x, d)).join(' . ') : compact(v);
    case 'set':
      // An anonymous set `{ 80, 443 }` (array), or the set statement `update @s { ip saddr }`.
      if (Array.isArray(v)) return `{ ${v.map((x) => (Array.isArray(x) && x.length === 2 ? `${render(x[0] ?? null, d)} : ${render(x[1] ?? null, d)}` : render(x, d))).join(', ')} }`;
      return `${r(o['op'])} ${r(o['set'])} { ${r(o['elem'])} }`;
    case 'elem': return renderElementKey(e);
    case 'numgen': return `numgen ${r(o['mode'])} mod ${r(o['mod'])}${o['offset'] !== undefined && o['offset'] !== 0 ? ` offset ${r(o['offset'])}` : ''}`;
    case 'jhash':
    case 'symhash': return `${k} ${r(o['expr'])} mod ${r(o['mod'])}`;
    case 'jump':
    case 'goto': return `${k} ${r(o['target'])}`;
    case 'vmap':
    case 'map': return `${r(o['key'])} ${k} ${r(o['data'])}`;
    case 'mangle': return `${r(o['key'])} set ${r(o['value'])}`;
    case 'counter': return 'counter';
    case 'dnat':
    case 'snat': {
      const addr = o['addr'] === undefined ? '' : r(o['addr']);
      const port = o['port'] === undefined ? '' : `:${r(o['port'])}`;
      return `${k} to ${addr}${port}${o['flags'] === undefined ? '' : ` ${r(o['flags'])}`}`;
    }
    case 'masquerade':
    case 'redirect': {
      const port = o['port'] === undefined ? '' : ` to :${r(o['port'])}`;
      return `${k}${port}${o['flags'] === undefined ? '' : ` ${r(o['flags'])}`}`;
    }
    case 'reject': return o['expr'] === undefined ? 'reject' : `reject with ${r(o['type'])} ${r(o['expr'])}`;
    case 'log': return o['prefix'] === undefined ? 'log' : `log prefix ${quote(scalar(o['prefix']))}`;
    case 'limit': return `limit rate ${r(o['rate'])}/${r(o['per'])}`;
    case 'xt': return `xt ${r(o['type'])} ${r(o['name'])}`;
    default: return k;
  }
}

function scalar(v: Json | undefined): string {
  if (v === undefined || v === null) return '';
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return String(v);
  return compact(v);
}

const quote = (s: string): string => JSON.stringify(s);

/**
 * The line each item of the top-level `nftables` array starts on. `nft -j`
 * prints one line, but people paste it through `jq`; JSON.parse gives no
 * positions, so this walks the (already valid) text once.
 */
function itemLines(text: string, count: number): number[] {
  const out: number[] = [];
  let line = 1;
  let depth = 0;
  let inString = false;
  let inArray = false;
  let expectItem = false;
  let lastKey = '';
  let keyStart = -1;
  for (let i = 0; i < text.length && out.length < count; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x0a) { line++; continue; }
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) { inString = false; if (depth === 1 && keyStart >= 0) lastKey = text.slice(keyStart, i); }
      continue;
    }
    if (c === 0x20 || c === 0x09 || c === 0x0d) continue;
    if (expectItem) { out.push(line); expectItem = false; }
    if (c === 0x22) { inString = true; keyStart = i + 1; continue; }
    if (c === 0x7b || c === 0x5b) {
      depth++;
      if (depth === 2 && c === 0x5b && lastKey === 'nftables') { inArray = true; expectItem = true; }
      continue;
    }
    if (c === 0x7d || c === 0x5d) {
      if (depth === 2 && inArray) inArray = false;
      depth--;
      continue;
    }
    if (c === 0x2c && depth === 2 && inArray) expectItem = true;
  }
  return out;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** V8 says `… in JSON at position N (line L column C)`; older ones only the position. */
function errorLine(text: string, err: unknown): number {
  const msg = errorMessage(err);
  const l = LINE_IN_MESSAGE.exec(msg);
  if (l?.[1] !== undefined) return Number(l[1]);
  const p = POSITION_IN_MESSAGE.exec(msg);
  if (p?.[1] !== undefined) {
    const pos = Math.min(Number(p[1]), text.length);
    let line = 1;
    for (let i = 0; i < pos; i++) if (text.charCodeAt(i) === 0x0a) line++;
    return line;
  }
  return 1;
}
const LINE_IN_MESSAGE = /\(line (\d+) column \d+\)/;
const POSITION_IN_MESSAGE = /at position (\d+)/;

function lineText(text: string, line: number): string {
  return clip((text.split('\n')[line - 1] ?? '').replace(/\r$/, ''));
}

/** A problem quotes its line; an nft -j document is one line of megabytes. */
function clip(s: string): string {
  return s.length > 500 ? `${s.slice(0, 500)}…` : s;
}
