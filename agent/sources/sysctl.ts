// `sysctl -a` text: `name = value`, one per line (procps sysctl.c prints
// "%s = %s\n"). The agent reads /proc/sys itself and renders the same form, so
// what it sends is exactly what `sysctl NAME` would print on the node.
import type { Sysctl } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

export function parseSysctl(text: string): ParseResult<Sysctl> {
  const records: Sysctl[] = [];
  const problems: Problem[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (line.trim() === '') continue;
    const eq = line.indexOf(' = ');
    const name = eq > 0 ? line.slice(0, eq).trim() : '';
    if (eq < 0 || !/^[a-z0-9_.\-/@:]+$/i.test(name)) {
      problems.push({ line: i + 1, text: line, reason: 'not a `name = value` sysctl line' });
      continue;
    }
    // Multi-value sysctls (ip_local_port_range) are tab-separated in procfs.
    records.push({ name, value: line.slice(eq + 3).replace(/\s+/g, ' ').trim(), raw: line });
  }
  return { records, problems };
}

/** `/proc/sys/net/ipv4/conf/eth0/rp_filter` → `net.ipv4.conf.eth0.rp_filter` (an interface name with a dot becomes `/`, as sysctl does). */
export function sysctlNameOfPath(path: string): string {
  return path
    .replace(/^\/proc\/sys\//, '')
    .split('/')
    .map((part) => part.replaceAll('.', '/'))
    .join('.');
}
