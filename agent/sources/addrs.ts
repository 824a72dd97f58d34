// `ip addr` / `ip -o addr` (FORMATS.md §6), printed by print_addrinfo() in
// iproute2 ip/ipaddress.c:
//   [N: IF]    FAMILY LOCAL[ peer PEER]/LEN [metric M] [brd B] [any A] scope S [FLAGS…] [LABEL]
//          valid_lft … preferred_lft …
// In `ip addr` the address lines follow their interface's `N: IF: <FLAGS> …`
// header (see links.ts); `ip -o addr` puts `N: IF` in front of each address
// and joins the valid_lft line with a backslash. FLAGS come from
// print_ifa_flags() (`dynamic` is printed for an address that is not
// permanent; unknown bits as `flags %02x`). LABEL, IFA_LABEL, exists for
// IPv4 only: the interface name or `IF:alias`.
import { canonicalIp } from '../../contract/address.ts';
import type { Address } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';
import { readLinkHeader } from './links.ts';
import { tokenize, unreadTail, type Token } from './routes.ts';

const ADDR_FLAGS = new Set([
  'secondary', 'temporary', 'nodad', 'optimistic', 'dadfailed', 'home', 'deprecated', 'tentative', 'permanent', 'dynamic',
  'mngtmpaddr', 'noprefixroute', 'autojoin', 'stable-privacy',
]);
const IGNORED_KEYS = new Set(['metric', 'any', 'proto']);

// `N: IF    inet…` (ip -o addr); print_addrinfo() prints only the name there.
const ONELINE = /^\s*(\d+):\s+([^\s:/@]+)(?:@\S*)?\s+(?=inet6?(?:\s|$))/;
const ADDR_LINE = /^\s+(?=inet6?(?:\s|$))/;
// Lines of `ip addr` that are not addresses: the link/ line, altnames, lifetimes.
const SKIPPED_LINE = /^\s+(link\/|altname\b|prop list\b|valid_lft\b)/;
const IFNAME = /^[^\s:/<>#()]+$/;

interface Interface {
  readonly ifindex: number | null;
  readonly ifname: string;
}

type Read = { readonly ok: true; readonly address: Address; readonly tail: Token | null } | { readonly ok: false; readonly reason: string };

function readAddress(line: string, from: number, end: number, iface: Interface | null): Read {
  const tokens = tokenize(line.slice(0, end), from);
  const family = tokens[0]?.text === 'inet6' ? 'inet6' : 'inet';
  const local = tokens[1]?.text;
  if (local === undefined) return { ok: false, reason: `\`${family}\` without an address (a cut line?)` };
  let address: string | null;
  let prefixLen: number | null = null;
  const slash = local.indexOf('/');
  address = canonicalIp(slash < 0 ? local : local.slice(0, slash));
  if (address === null) return { ok: false, reason: `${JSON.stringify(local)} is not an IP address` };
  if (slash >= 0) prefixLen = readLen(local.slice(slash + 1), family);
  else if (tokens[2]?.text !== 'peer') return { ok: false, reason: `${JSON.stringify(local)} has no prefix length (a cut line?)` };
  let broadcast: string | null = null;
  let scope: string | null = null;
  let label: string | null = null;
  const flags: string[] = [];
  let tail: Token | null = null;
  for (let i = 2; i < tokens.length; i++) {
    const tok = tokens[i] as Token;
    const key = tok.text;
    if (label !== null) {
      tail = tok;
      break;
    }
    if (ADDR_FLAGS.has(key)) {
      flags.push(key);
      continue;
    }
    const isKey = key === 'peer' || key === 'brd' || key === 'scope' || key === 'flags' || IGNORED_KEYS.has(key);
    if (isKey) {
      const v = tokens[i + 1]?.text;
      if (v === undefined) return { ok: false, reason: `\`${key}\` without a value (a cut line?)` };
      i++;
      if (key === 'peer') {
        // Point-to-point: the prefix length is printed after the peer.
        const ps = v.indexOf('/');
        if (ps < 0 || canonicalIp(v.slice(0, ps)) === null) return { ok: false, reason: `peer ${JSON.stringify(v)} is not an address/length` };
        prefixLen = readLen(v.slice(ps + 1), family);
      } else if (key === 'brd') {
        broadcast = canonicalIp(v);
        if (broadcast === null) return { ok: false, reason: `broadcast ${JSON.stringify(v)} is not an IP address` };
      } else if (key === 'scope') {
        scope = v;
      } else if (key === 'flags') {
        flags.push(`flags ${v}`);
      }
      continue;
    }
    // The label ends an IPv4 line: the interface name, or IF:alias.
    const isLabel =
      family === 'inet' &&
      (iface === null ? IFNAME.test(key.split(':')[0] ?? '') : key === iface.ifname || key.startsWith(`${iface.ifname}:`));
    if (isLabel) {
      label = key;
      continue;
    }
    tail = tok;
    break;
  }
  if (prefixLen === null) return { ok: false, reason: `prefix length of ${JSON.stringify(local)} is not a number in range` };
  const owner: Interface | null = iface ?? (label === null ? null : { ifindex: null, ifname: label.split(':')[0] ?? label });
  if (owner === null)
    return {
      ok: false,
      reason: `${family} address without an interface header above it${family === 'inet6' ? ' (IPv6 addresses carry no label)' : ''}`,
    };
  return {
    ok: true,
    address: { ifindex: owner.ifindex, ifname: owner.ifname, family, address, prefixLen, broadcast, scope, flags, raw: line },
    tail,
  };
}

function readLen(text: string, family: 'inet' | 'inet6'): number | null {
  if (!/^\d{1,3}$/.test(text)) return null;
  const n = Number(text);
  return n <= (family === 'inet' ? 32 : 128) ? n : null;
}

/**
 * Parses `ip addr` and `ip -o addr`: one record per address. `ifname` comes
 * from the interface header (without `@peer`); an IPv4 line pasted without its
 * header takes it from its label. Link headers and link/ lines are skipped, so
 * the same text can feed parseLinks.
 */
export function parseAddrs(text: string): ParseResult<Address> {
  const records: Address[] = [];
  const problems: Problem[] = [];
  let iface: Interface | null = null;
  const lines = text.split('\n');
  for (let n = 0; n < lines.length; n++) {
    const line = lines[n] ?? '';
    const lineNo = n + 1;
    if (line.trim() === '') continue;

    const header = readLinkHeader(line);
    if (header !== null) {
      iface = { ifindex: header.ifindex, ifname: header.ifname };
      continue;
    }
    if (SKIPPED_LINE.test(line)) continue;

    let from: number;
    let owner: Interface | null;
    const one = ONELINE.exec(line);
    if (one !== null) {
      from = one[0].length;
      owner = { ifindex: Number(one[1]), ifname: one[2] ?? '' };
    } else if (ADDR_LINE.test(line)) {
      from = 0;
      owner = iface;
    } else {
      problems.push({ line: lineNo, text: line, reason: 'not a line of ip addr (expected `N: IF: <FLAGS> …`, `link/…`, `inet …`, `inet6 …` or `valid_lft …`)' });
      continue;
    }
    // `ip -o` joins the valid_lft line after a backslash.
    const backslash = line.indexOf('\\', from);
    const end = backslash < 0 ? line.length : backslash;
    const r = readAddress(line, from, end, owner);
    if (!r.ok) {
      problems.push({ line: lineNo, text: line, reason: r.reason });
      continue;
    }
    records.push(r.address);
    if (r.tail !== null) problems.push(unreadTail(lineNo, line, r.tail, 'ip addr'));
    else if (backslash >= 0) {
      const rest = tokenize(line, backslash + 1);
      const odd = rest.find((t) => !/^(valid_lft|preferred_lft|forever|\d+sec|-?\d+sec)$/.test(t.text));
      if (odd !== undefined) problems.push(unreadTail(lineNo, line, odd, 'ip addr'));
    }
  }
  return { records, problems };
}
