// Realistic conntrack lines for the collector benches, as procfs prints them
// (FORMATS.md §3.1): pods talking to ClusterIPs (TCP, DNS over UDP), clients
// from outside through NodePorts, entries in every common state, addresses
// and ports varied by a seeded generator so no two runs differ and no two
// entries share a tuple. The records are the project's own parser's reading
// of these lines, so what the collector holds is what a node would send.
import type { ConntrackEntry } from '../../contract/records.ts';
import { parseConntrackLine } from '../../agent/sources/conntrack.ts';
import { rng } from '../helpers/rng.ts';

export interface LineMaker {
  /** A new entry's line, on a tuple never handed out before by this maker. */
  fresh(): string;
  /** The same tuple in another state (what churn does to a held entry). */
  moved(line: string): string;
}

export function lineMaker(seed: number, nodeIndex: number): LineMaker {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const int = (lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
  const podOf = (n: number): string => `10.244.${n % 250}.${int(2, 254)}`;
  let port = 32768;
  const nextPort = (): number => {
    port = port >= 60999 ? 32768 : port + 1;
    return port;
  };
  const node = `10.0.${Math.floor(nodeIndex / 250) % 250}.${(nodeIndex % 250) + 1}`;
  let serial = 0;
  const fresh = (): string => {
    serial++;
    const kind = r();
    const client = podOf(nodeIndex);
    const sport = nextPort();
    // A distinct client per wrap of the port range keeps tuples unique.
    const src = serial % 28000 === 0 ? podOf(nodeIndex + serial) : client;
    if (kind < 0.25) {
      const svc = `10.96.${int(0, 3)}.${int(1, 254)}`;
      const ep = podOf(int(0, 249));
      return `ipv4     2 udp      17 ${int(1, 120)} src=${src} dst=${svc} sport=${sport} dport=53 src=${ep} dst=${src} sport=53 dport=${sport} mark=0 zone=0 use=2`;
    }
    if (kind < 0.4) {
      const lb = `203.0.113.${int(1, 254)}`;
      const ext = `198.51.${int(0, 255)}.${int(1, 254)}`;
      const np = int(30000, 32767);
      const ep = podOf(int(0, 249));
      return `ipv4     2 tcp      6 ${int(1, 120)} TIME_WAIT src=${ext} dst=${node} sport=${sport} dport=${np} src=${ep} dst=${node} sport=8080 dport=${sport} [ASSURED] mark=0 zone=0 use=2${lb ? '' : ''}`;
    }
    const svc = `10.96.${int(0, 3)}.${int(1, 254)}`;
    const ep = podOf(int(0, 249));
    const dport = pick([80, 443, 8080, 5432, 6379, 9090]);
    const state = pick(['ESTABLISHED', 'ESTABLISHED', 'ESTABLISHED', 'TIME_WAIT', 'SYN_SENT', 'CLOSE_WAIT']);
    const timeout = state === 'ESTABLISHED' ? int(431000, 432000) : int(1, 120);
    const flags = state === 'SYN_SENT' ? '' : ' [ASSURED]';
    const unreplied = state === 'SYN_SENT' ? ' [UNREPLIED]' : '';
    return `ipv4     2 tcp      6 ${timeout} ${state} src=${src} dst=${svc} sport=${sport} dport=${dport}${unreplied} src=${ep} dst=${src} sport=${dport} dport=${sport}${flags} mark=0 zone=0 use=2`;
  };
  const moved = (line: string): string => {
    if (line.includes(' udp ')) return line.replace(/ 17 \d+ /, ` 17 ${int(100, 180)} `).replace(' mark=0', ' [ASSURED] mark=0').replace(' [ASSURED] [ASSURED]', ' [ASSURED]');
    const next = line.includes('SYN_SENT') ? 'ESTABLISHED' : line.includes('ESTABLISHED') ? 'TIME_WAIT' : 'SYN_SENT';
    const swapped = line.replace(/ 6 \d+ [A-Z_]+ /, ` 6 ${next === 'ESTABLISHED' ? 431999 : 120} ${next} `).replace(' [UNREPLIED]', '').replace(' [ASSURED]', '');
    if (next === 'SYN_SENT') return swapped.replace(/( dport=\d+)( src=)/, '$1 [UNREPLIED]$2');
    return swapped.replace(' mark=0', ' [ASSURED] mark=0');
  };
  return { fresh, moved };
}

export function recordOf(line: string): ConntrackEntry {
  const r = parseConntrackLine(line);
  if ('error' in r) throw new Error(`bench line does not parse (${r.error}): ${line}`);
  return r;
}
