// One spelling per address so that records from different tools compare equal:
// procfs prints IPv6 in full (`fe80:0000:…`), conntrack -L and ipvsadm compress
// it (ipvsadm also brackets it). RFC 5952 form is what every source is turned into.
import { isIPv4, isIPv6 } from 'node:net';

/** RFC 5952 text for an IPv6 address, the address unchanged for IPv4, null for anything else. */
export function canonicalIp(text: string): string | null {
  const s = text.startsWith('[') && text.endsWith(']') ? text.slice(1, -1) : text;
  if (isIPv4(s)) return s;
  if (!isIPv6(s)) return null;
  return compressIPv6(expandIPv6(s));
}

function expandIPv6(s: string): number[] {
  // An embedded IPv4 tail (::ffff:10.0.0.1) is rewritten as its two hex groups.
  const lastColon = s.lastIndexOf(':');
  const tail = s.slice(lastColon + 1);
  let text = s;
  if (tail.includes('.')) {
    const [a = 0, b = 0, c = 0, d = 0] = tail.split('.').map(Number);
    text = `${s.slice(0, lastColon + 1)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [left = '', right] = text.split('::');
  const parse = (part: string) => (part === '' ? [] : part.split(':').map((g) => parseInt(g, 16)));
  const l = parse(left);
  const r = right === undefined ? [] : parse(right);
  const zeros = right === undefined ? 0 : 8 - l.length - r.length;
  return [...l, ...new Array<number>(zeros).fill(0), ...r];
}

function compressIPv6(groups: number[]): string {
  // Longest run of two or more zero groups becomes `::` (first one on a tie).
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** Splits `addr:port`, `[v6]:port` or (procfs hex) — returns null when there is no numeric port. */
export function splitHostPort(text: string): { host: string; port: string } | null {
  if (text.startsWith('[')) {
    const end = text.lastIndexOf(']:');
    if (end < 0) return null;
    return { host: text.slice(1, end), port: text.slice(end + 2) };
  }
  const i = text.lastIndexOf(':');
  if (i < 0 || text.indexOf(':') !== i) return null;
  return { host: text.slice(0, i), port: text.slice(i + 1) };
}
