// `ip route show table all` and `ip -6 route show table all` (FORMATS.md §6),
// printed by print_route() in iproute2 ip/iproute.c:
//   [TYPE ]DST [from SRCPFX] [tos T] [via [FAMILY ]GW] [nhid N] [dev IF] [table T]
//   [proto P] [scope S] [src A] [metric N] [FLAGS…] [mark M] [realms R]
//   [METRICS… e.g. `mtu [lock ]1400`] [expires Ns] [error E] [pref P]
// TYPE is printed for every type but unicast (rtnl_rtntype_n2a). Each token is
// printed as "%s " (trailing space); before iproute2 v4.8.0 (7cc7cb8a) some
// came out doubled (`dev eth0  proto kernel`). A multipath route prints its
// nexthops on continuation lines, `_SL_ "\tnexthop via GW dev IF weight W
// [dead|onlink|pervasive|linkdown…]"`, which `ip -o` joins with a backslash.
// Fields are read by keyword, so the order of iproute2 versions does not matter.
import { canonicalIp } from '../../contract/address.ts';
import type { Route } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

export type Family = 'inet' | 'inet6';

export interface RouteDefaults {
  /** Family of a route whose addresses do not tell (`default dev wg0`, `unreachable default`). */
  readonly family?: Family;
  /** Table of a route printed without `table X`: `main` for `show table all`, the asked table for `show table T`. */
  readonly table?: string;
}

/** A token and where it starts in its line, so an unread tail can be quoted verbatim. */
export interface Token {
  readonly text: string;
  readonly start: number;
}

/** Whitespace-separated tokens; `ip -o` writes `\` where the tool would break the line (_SL_ in ip/ip.c). */
export function tokenize(line: string, from = 0): Token[] {
  const out: Token[] = [];
  const re = /[^\s\\]+/g;
  re.lastIndex = from;
  for (let m = re.exec(line); m !== null; m = re.exec(line)) out.push({ text: m[0], start: m.index });
  return out;
}

/** The text from `token` to the end of the line, as it was written (trailing blanks dropped). */
export function tailFrom(line: string, token: Token): string {
  return line.slice(token.start).trimEnd();
}

/**
 * A problem for text the tool does not print (`<-- worker-hello-…`, `# …`,
 * `...`): people annotate pasted output (FORMATS.md §7). The record before it
 * is kept; the problem makes sure the text is not silently dropped.
 */
export function unreadTail(lineNo: number, line: string, token: Token, what: string): Problem {
  return { line: lineNo, text: line, reason: `text that ${what} does not print, ignored: ${JSON.stringify(tailFrom(line, token))}` };
}

// rtnl_rtntype_n2a() in lib/rt_names.c.
const ROUTE_TYPES = new Set([
  'unicast', 'local', 'broadcast', 'anycast', 'multicast', 'blackhole', 'unreachable', 'prohibit', 'throw', 'nat', 'xresolve', 'unspec',
]);

// rtm_flags / rtnh_flags as print_rt_flags() names them. (`cache`, the marker
// of a cloned route, is read separately: it may start a continuation line.)
const ROUTE_FLAGS = new Set([
  'dead', 'onlink', 'pervasive', 'offload', 'trap', 'notify', 'linkdown', 'unresolved', 'rt_offload', 'rt_trap', 'rt_offload_failed',
]);

// Keywords whose one value the record does not keep. The metrics (mx_names[]
// in iproute.c) may carry `lock` before their value.
const IGNORED_KEYS = new Set([
  'from', 'tos', 'dsfield', 'nhid', 'pref', 'error', 'expires', 'mark', 'realm', 'realms', 'iif', 'weight', 'ttl-propagate',
  'users', 'used', 'age', 'ipid', 'ts', 'tsage',
]);
const METRIC_KEYS = new Set([
  'mtu', 'window', 'rtt', 'rttvar', 'ssthresh', 'cwnd', 'advmss', 'reordering', 'hoplimit', 'initcwnd', 'features', 'rto_min',
  'initrwnd', 'quickack', 'congctl', 'fastopen_no_cookie',
]);
// `via inet6 fe80::1`: an RTA_VIA gateway of another family (family_name()).
const VIA_FAMILIES = new Set(['inet', 'inet6', 'mpls', 'link', 'bridge', 'ipx', 'dnet']);
// lwt_print_encap() prints a type-specific list; it ends where a route keyword resumes.
const AFTER_ENCAP = new Set(['via', 'dev', 'table', 'proto', 'scope', 'metric', 'nexthop', 'pref', 'weight']);

interface Prefix {
  readonly text: string;
  readonly family: Family | null;
}

/**
 * `default`, `A`, `A/len` or `0/len` (printed when a prefix length has no
 * address attribute). Addresses are made canonical; `/len` is kept only when
 * printed, because iproute2 omits it for host routes.
 */
export function readPrefix(text: string): Prefix | null {
  if (text === 'default' || text === 'all') return { text, family: null };
  const slash = text.indexOf('/');
  const addr = slash < 0 ? text : text.slice(0, slash);
  const len = slash < 0 ? null : text.slice(slash + 1);
  if (len !== null && !/^\d{1,3}$/.test(len)) return null;
  if (addr === '0' && len !== null) return { text: `0/${Number(len)}`, family: null };
  const ip = canonicalIp(addr);
  if (ip === null) return null;
  const family: Family = ip.includes(':') ? 'inet6' : 'inet';
  if (len !== null && Number(len) > (family === 'inet' ? 32 : 128)) return null;
  return { text: len === null ? ip : `${ip}/${Number(len)}`, family };
}

const familyOf = (ip: string): Family => (ip.includes(':') ? 'inet6' : 'inet');

interface Draft {
  type: string;
  dst: Prefix;
  via: string | null;
  viaFamily: Family | null;
  dev: string | null;
  table: string | null;
  proto: string | null;
  scope: string | null;
  src: string | null;
  metric: number | null;
  flags: string[];
}

type ReadResult = { readonly ok: true; readonly tail: Token | null } | { readonly ok: false; readonly reason: string };

/**
 * Reads `tokens[i…]` into `d`. In a nexthop (after `nexthop`, on its own
 * continuation line or inline with `ip -o`) via/dev fill the route's only if it
 * has none: the record keeps the first nexthop's gateway and device.
 */
function readFields(tokens: readonly Token[], i: number, d: Draft, inNexthop: boolean): ReadResult {
  let nexthop = inNexthop;
  const value = (k: number): string | undefined => tokens[k]?.text;
  while (i < tokens.length) {
    const tok = tokens[i] as Token;
    const key = tok.text;
    if (ROUTE_FLAGS.has(key)) {
      if (!d.flags.includes(key)) d.flags.push(key);
      i++;
      continue;
    }
    if (key === 'nexthop') {
      nexthop = true;
      i++;
      continue;
    }
    if (key === 'cache') {
      i++;
      continue;
    }
    const known =
      key === 'via' || key === 'dev' || key === 'table' || key === 'proto' || key === 'scope' || key === 'src' ||
      key === 'metric' || key === 'as' || key === 'encap' || IGNORED_KEYS.has(key) || METRIC_KEYS.has(key);
    if (!known) return { ok: true, tail: tok };
    let v = value(i + 1);
    if (v === undefined) return { ok: false, reason: `\`${key}\` without a value (a cut line?)` };
    switch (key) {
      case 'via': {
        let explicitFamily = false;
        if (VIA_FAMILIES.has(v)) {
          explicitFamily = true;
          i++;
          v = value(i + 1);
          if (v === undefined) return { ok: false, reason: '`via` without a gateway (a cut line?)' };
        }
        const gw = canonicalIp(v);
        if (gw === null) return { ok: false, reason: `gateway ${JSON.stringify(v)} is not an IP address` };
        if (d.via === null) {
          d.via = gw;
          // A gateway of another family (RFC 5549) says nothing about the route's.
          d.viaFamily = explicitFamily ? null : familyOf(gw);
        }
        break;
      }
      case 'dev':
        if (d.dev === null || !nexthop) d.dev = v;
        break;
      case 'table':
        d.table = v;
        break;
      case 'proto':
        d.proto = v;
        break;
      case 'scope':
        d.scope = v;
        break;
      case 'src': {
        const src = canonicalIp(v);
        if (src === null) return { ok: false, reason: `source ${JSON.stringify(v)} is not an IP address` };
        d.src = src;
        break;
      }
      case 'metric':
        if (!/^\d+$/.test(v) || Number(v) > 0xffffffff) return { ok: false, reason: `metric ${JSON.stringify(v)} is not a number` };
        d.metric = Number(v);
        break;
      case 'as':
        // `as to A` (RTA_NEWDST, a NAT route).
        if (v === 'to') i++;
        break;
      case 'encap': {
        let k = i + 2;
        while (k < tokens.length && !AFTER_ENCAP.has(value(k) ?? '')) k++;
        i = k;
        continue;
      }
      default:
        if (METRIC_KEYS.has(key) && v === 'lock') i++;
    }
    i += 2;
  }
  return { ok: true, tail: null };
}

/**
 * Parses `ip [-6] route show table all`. A multipath route's nexthop lines
 * attach to it (raw joins the lines with `\n`). `table` defaults to `main`
 * (iproute2 omits `table main`); family comes from the route's addresses and,
 * for `default` routes without any, from `defaults.family`.
 *
 * Note: `ip route show table all` without `-4` dumps both families (the
 * `table all` filter leaves the family unspecified), so IPv6 lines are read as
 * IPv6 whatever `defaults.family` says.
 */
export function parseRoutes(text: string, defaults: RouteDefaults = {}): ParseResult<Route> {
  const records: Route[] = [];
  const problems: Problem[] = [];
  // The route the next `nexthop` continuation line belongs to, if any.
  let open: { draft: Draft; raw: string[]; index: number } | null = null;
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n] ?? '';
    const lineNo = n + 1;
    if (line.trim() === '') {
      open = null;
      continue;
    }
    const tokens = tokenize(line);
    const first = tokens[0]?.text ?? '';

    if (/^\s/.test(line) && (first === 'nexthop' || first === 'cache')) {
      if (open === null) {
        problems.push({ line: lineNo, text: line, reason: `\`${first}\` continuation line without a route above it` });
        continue;
      }
      const r = readFields(tokens, 0, open.draft, first === 'nexthop');
      if (!r.ok) {
        problems.push({ line: lineNo, text: line, reason: r.reason });
        continue;
      }
      open.raw.push(line);
      records[open.index] = toRoute(open.draft, open.raw.join('\n'), defaults);
      if (r.tail !== null) problems.push(unreadTail(lineNo, line, r.tail, 'ip route'));
      continue;
    }
    open = null;

    let i = 0;
    let type = 'unicast';
    if (ROUTE_TYPES.has(first)) {
      type = first;
      i = 1;
    }
    const dstText = tokens[i]?.text;
    const dst = dstText === undefined ? null : readPrefix(dstText);
    if (dst === null || dstText === 'all') {
      problems.push({
        line: lineNo,
        text: line,
        reason: dstText === undefined ? `\`${type}\` without a destination (a cut line?)` : `destination ${JSON.stringify(dstText)} is not default, an address or a prefix`,
      });
      continue;
    }
    const draft: Draft = {
      type, dst, via: null, viaFamily: null, dev: null, table: null, proto: null, scope: null, src: null, metric: null, flags: [],
    };
    const r = readFields(tokens, i + 1, draft, false);
    if (!r.ok) {
      problems.push({ line: lineNo, text: line, reason: r.reason });
      continue;
    }
    records.push(toRoute(draft, line, defaults));
    open = { draft, raw: [line], index: records.length - 1 };
    if (r.tail !== null) problems.push(unreadTail(lineNo, line, r.tail, 'ip route'));
  }
  return { records, problems };
}

function toRoute(d: Draft, raw: string, defaults: RouteDefaults): Route {
  const family =
    d.dst.family ?? d.viaFamily ?? (d.src === null ? null : familyOf(d.src)) ?? defaults.family ?? 'inet';
  return {
    family,
    table: d.table ?? defaults.table ?? 'main',
    type: d.type,
    dst: d.dst.text,
    via: d.via,
    dev: d.dev,
    proto: d.proto,
    scope: d.scope,
    src: d.src,
    metric: d.metric,
    flags: [...d.flags],
    raw,
  };
}
