// `ipvsadm -Ln` virtual servers and their real servers (FORMATS.md §2,
// ipvsadm.c list_all(), print_title(), print_service_entry()):
//   IP Virtual Server version 1.2.1 (size=4096)        (not with -t/-u/-f ADDR)
//   Prot LocalAddress:Port Scheduler Flags
//     -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
//   TCP  10.96.0.1:443 rr persistent 10800
//     -> 10.0.0.5:6443                Masq    1      3          0
// Lines are read by whitespace, since pasted copies lose the padding.
// `--stats` and `--rate` print five counters where the scheduler and the
// forward method, weight and connection counts would be:
//   Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
//     -> RemoteAddress:Port
//   TCP  10.96.0.1:443                      12      120       96    10080    18522
//     -> 10.0.0.5:6443                      12      120       96    10080    18522
// (`"%-33s"` name then print_largenum() columns; `"  -> %-28s"` for a
// destination, whose --rate CPS/InPPS/OutPPS are plain `%8u`). They give the
// same records with `stats` or `rate` set and the absent fields null. The
// title line says which listing follows; `--thresholds`, `--persistent-conn`
// and `--tun-info` print other columns and are reported, never read as the
// default listing.
import { canonicalIp, splitHostPort } from '../../contract/address.ts';
import type { IpvsDestination, IpvsRecord, IpvsService } from '../../contract/records.ts';
import { ipvsServiceKey, type ParseResult, type Problem } from '../../contract/sources.ts';

type Listing = 'default' | 'stats' | 'rate' | 'thresholds' | 'persistent-conn' | 'tun-info';

const VERSION_LINE = /^IP Virtual Server version \d+\.\d+\.\d+ \(size=\d+\)$/;
const BLANKS = /\s+/;
const SCHEDULER = /^[a-z][a-z0-9_-]*$/;
const DECIMAL = /^\d+$/;
/** fwd_name(): the forwarding method of a real server. */
const FORWARD = new Set(['Masq', 'Local', 'Tunnel', 'Route']);
const isServiceProto = (p: string): p is 'TCP' | 'UDP' | 'SCTP' => p === 'TCP' || p === 'UDP' || p === 'SCTP';

const NOT_NUMERIC =
  'host or port is a name, not a number: take the output with `ipvsadm -Ln` (without -n ipvsadm resolves names and cuts them at 33 bytes for a service, 28 for a destination, which can swallow the port)';

/** Which listing a `Prot LocalAddress:Port …` title announces (print_title()). */
function listingOf(title: readonly string[]): Listing | null {
  const rest = title.slice(2).join(' ');
  switch (rest) {
    case 'Scheduler Flags':
      return 'default';
    case 'Conns InPkts OutPkts InBytes OutBytes':
      return 'stats';
    case 'CPS InPPS OutPPS InBPS OutBPS':
      return 'rate';
    case 'Uthreshold Lthreshold ActiveConn InActConn':
      return 'thresholds';
    case 'Weight PersistConn ActiveConn InActConn':
      return 'persistent-conn';
    default:
      return null;
  }
}

const UNSUPPORTED: Record<Exclude<Listing, 'default' | 'stats' | 'rate'>, string> = {
  thresholds: '`ipvsadm -Ln --thresholds` listing (no forward method or weight)',
  'persistent-conn': '`ipvsadm -Ln --persistent-conn` listing (no forward method)',
  'tun-info': '`ipvsadm -Ln --tun-info` listing (an extra TunnelInfo column)',
};

/**
 * One print_largenum() column: `%9llu` below 1e8, else the value divided by
 * 1e3, 1e6, 1e9 or 1e12 and suffixed K, M, G or T (remainder dropped). The
 * value returned for a suffixed column is its lower bound.
 */
const LARGENUM = /^(\d+)([KMGT]?)$/;
const LARGENUM_UNIT: Readonly<Record<string, number>> = { '': 1, K: 1e3, M: 1e6, G: 1e9, T: 1e12 };
const looksNumeric = (t: string): boolean => LARGENUM.test(t);

/** The five counters at tokens[from…]; an error when there are not exactly five numbers. */
function readCounters(tokens: readonly string[], from: number, listing: 'stats' | 'rate'): number[] | { error: string } {
  const columns = tokens.slice(from);
  const names = listing === 'stats' ? 'Conns InPkts OutPkts InBytes OutBytes' : 'CPS InPPS OutPPS InBPS OutBPS';
  const values: number[] = [];
  for (const c of columns.slice(0, 5)) {
    const m = LARGENUM.exec(c);
    // A scheduler or forward method here is a default-listing line under this title.
    if (m === null) return { error: `${JSON.stringify(c)} where a --${listing} counter belongs (${names})` };
    values.push(Number(m[1]) * (LARGENUM_UNIT[m[2] ?? ''] ?? 1));
  }
  if (values.length < 5) return { error: `${values.length} counters where --${listing} prints 5 (${names}): a cut line?` };
  if (columns.length > 5) return { error: `unexpected ${JSON.stringify(columns.slice(5).join(' '))} after ${names.split(' ').at(-1) ?? ''}` };
  return values;
}

function countersOf(values: readonly number[], listing: 'stats' | 'rate'): Pick<IpvsService, 'stats' | 'rate'> {
  const [a = 0, b = 0, c = 0, d = 0, e = 0] = values;
  return listing === 'stats'
    ? { stats: { conns: a, inPkts: b, outPkts: c, inBytes: d, outBytes: e }, rate: null }
    : { stats: null, rate: { cps: a, inPPS: b, outPPS: c, inBPS: d, outBPS: e } };
}

/** Address and port of `addr:port` / `[v6]:port`; either is null when ipvsadm printed a name there. */
function endpoint(text: string): { address: string | null; port: number | null } {
  const hp = splitHostPort(text);
  if (hp === null) return { address: canonicalIp(text), port: null };
  const address = canonicalIp(hp.host);
  // A resolved name may have been cut inside its port, so a port is trusted
  // only behind a numeric host.
  const port = address !== null && DECIMAL.test(hp.port) && Number(hp.port) <= 65535 ? Number(hp.port) : null;
  return { address, port };
}

type ServiceRead = { service: IpvsService; numeric: boolean } | { error: string };

interface ServiceName {
  readonly proto: IpvsService['proto'];
  readonly address: string | null;
  readonly port: number | null;
  readonly fwmark: number | null;
  readonly flags: string[];
  readonly numeric: boolean;
  /** Index of the first token after the name. */
  readonly next: number;
}

/** The name print_service_entry() prints first: `TCP  addr:port` (1.26 prints every non-TCP service as UDP), `SCTP addr:port` (1.31), `FWM  N` or `FWM  N IPv6`. */
function readServiceName(tokens: readonly string[]): ServiceName | { error: string } {
  const [proto = '', name] = tokens;
  const kind = proto === 'FWM' ? 'FWM' : isServiceProto(proto) ? proto : null;
  if (kind === null) return { error: `${JSON.stringify(proto)} is not a service protocol` };
  if (name === undefined) return { error: 'service line cut short' };
  const flags: string[] = [];
  if (kind === 'FWM') {
    if (!DECIMAL.test(name)) return { error: `FWM service with a mark that is not a number: ${JSON.stringify(name)}` };
    // Kept as a flag: a v4 and a v6 service may share a mark.
    const v6 = tokens[2] === 'IPv6';
    if (v6) flags.push('IPv6');
    return { proto: kind, address: null, port: null, fwmark: Number(name), flags, numeric: true, next: v6 ? 3 : 2 };
  }
  const ep = endpoint(name);
  return { proto: kind, address: ep.address, port: ep.port, fwmark: null, flags, numeric: ep.address !== null && ep.port !== null, next: 2 };
}

/**
 * The name, then the scheduler and the suffix of print_service_entry():
 * ` (flag,…)` scheduler flags (1.31), ` persistent N`, ` mask M`, ` pe NAME`,
 * ` ops`.
 */
function readService(line: string, tokens: readonly string[]): ServiceRead {
  const named = readServiceName(tokens);
  if ('error' in named) return named;
  const { proto: kind, address, port, fwmark, flags, numeric } = named;
  let k = named.next;
  const scheduler = tokens[k++];
  if (scheduler === undefined) return { error: 'service line has no scheduler (cut short?)' };
  if (!SCHEDULER.test(scheduler)) {
    return {
      error: looksNumeric(scheduler)
        ? 'numbers where the scheduler belongs: a --stats or --rate line without its title line above it, which says which counters these are'
        : `${JSON.stringify(scheduler)} is not a scheduler name`,
    };
  }
  let persistentSeconds: number | null = null;
  const flagsAt = k;
  while (k < tokens.length) {
    const at = k;
    const t = tokens[k++] ?? '';
    if (at === flagsAt && t.startsWith('(') && t.endsWith(')')) {
      flags.push(...t.slice(1, -1).split(',').filter((f) => f !== ''));
    } else if (t === 'persistent' && DECIMAL.test(tokens[k] ?? '')) {
      persistentSeconds = Number(tokens[k++]);
    } else if ((t === 'mask' || t === 'pe') && tokens[k] !== undefined) {
      flags.push(`${t} ${tokens[k++] ?? ''}`);
    } else if (t === 'ops') {
      flags.push(t);
    } else {
      return { error: `unexpected ${JSON.stringify(t)} after the scheduler` };
    }
  }
  const service: IpvsService = {
    kind: 'service',
    proto: kind,
    address,
    port,
    fwmark,
    scheduler,
    flags,
    persistentSeconds,
    stats: null,
    rate: null,
    raw: line,
  };
  return { service, numeric };
}

/** A --stats or --rate service line: the name, then five counters. */
function readCountersService(line: string, tokens: readonly string[], listing: 'stats' | 'rate'): ServiceRead {
  const named = readServiceName(tokens);
  if ('error' in named) return named;
  const counters = readCounters(tokens, named.next, listing);
  if ('error' in counters) return counters;
  const { proto, address, port, fwmark, flags, numeric } = named;
  const service: IpvsService = {
    kind: 'service', proto, address, port, fwmark, scheduler: null, flags, persistentSeconds: null, ...countersOf(counters, listing), raw: line,
  };
  return { service, numeric };
}

type DestinationRead = { destination: IpvsDestination; numeric: boolean } | { error: string };

/** `  -> %-28s %-7s %-6d %-10u %-10u`: address, forward, weight, ActiveConn, InActConn. */
function readDestination(line: string, tokens: readonly string[], service: string): DestinationRead {
  if (tokens.length < 6) return { error: 'destination line cut short (expected address, forward method, weight, ActiveConn, InActConn)' };
  const [, name = '', forward = '', weight = '', active = '', inact = ''] = tokens;
  if (!FORWARD.has(forward)) {
    return {
      error: looksNumeric(forward)
        ? 'numbers where the forward method belongs: a --stats, --rate, --thresholds or --persistent-conn line without its title line above it'
        : `${JSON.stringify(forward)} is not a forward method (Masq, Local, Tunnel, Route)`,
    };
  }
  if (tokens.length > 6) return { error: `unexpected ${JSON.stringify(tokens.slice(6).join(' '))} after InActConn` };
  // Weight is `%-6d`: negative weights do not exist, but the format is signed.
  if (!/^-?\d+$/.test(weight) || !DECIMAL.test(active) || !DECIMAL.test(inact)) {
    return { error: 'weight, ActiveConn and InActConn must be numbers' };
  }
  const ep = endpoint(name);
  return {
    destination: {
      kind: 'destination',
      service,
      address: ep.address,
      port: ep.port,
      forward,
      weight: Number(weight),
      activeConn: Number(active),
      inactConn: Number(inact),
      stats: null,
      rate: null,
      raw: line,
    },
    numeric: ep.address !== null && ep.port !== null,
  };
}

/** `  -> %-28s` and five counters (--stats, --rate). */
function readCountersDestination(line: string, tokens: readonly string[], service: string, listing: 'stats' | 'rate'): DestinationRead {
  const name = tokens[1];
  if (name === undefined) return { error: 'destination line cut short' };
  const counters = readCounters(tokens, 2, listing);
  if ('error' in counters) return counters;
  const ep = endpoint(name);
  return {
    destination: {
      kind: 'destination', service, address: ep.address, port: ep.port,
      forward: null, weight: null, activeConn: null, inactConn: null, ...countersOf(counters, listing), raw: line,
    },
    numeric: ep.address !== null && ep.port !== null,
  };
}

export function parseIpvs(text: string): ParseResult<IpvsRecord> {
  const records: IpvsRecord[] = [];
  const problems: Problem[] = [];
  const lines = text.split('\n');
  let listing: Listing = 'default';
  /** ipvsServiceKey of the service line the next destinations belong to. */
  let current: string | null = null;

  for (let i = 0; i < lines.length; i++) {
    const rawLine = lines[i] ?? '';
    const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
    const trimmed = line.trim();
    if (trimmed === '') continue;
    const problem = (reason: string) => problems.push({ line: i + 1, text: line, reason });
    const tokens = trimmed.split(BLANKS);
    const first = tokens[0] ?? '';

    if (VERSION_LINE.test(trimmed)) continue;
    if (first === 'Prot' && tokens[1] === 'LocalAddress:Port') {
      const announced = listingOf(tokens);
      if (announced === null) problem('unknown ipvsadm listing title');
      else listing = announced;
      current = null;
      continue;
    }
    if (first === '->' && tokens[1] === 'RemoteAddress:Port') {
      // 1.31 --tun-info announces itself on the second title line only.
      if (tokens.slice(2).join(' ') === 'Forward TunnelInfo Weight ActiveConn InActConn') listing = 'tun-info';
      continue;
    }

    if (first === '->') {
      if (listing !== 'default' && listing !== 'stats' && listing !== 'rate') {
        problem(UNSUPPORTED[listing]);
        continue;
      }
      // The line's own shape first: a --stats line under an unreadable
      // --stats service line should say so, not blame the service.
      const read = listing === 'default' ? readDestination(line, tokens, current ?? '') : readCountersDestination(line, tokens, current ?? '', listing);
      if ('error' in read) {
        problem(read.error);
        continue;
      }
      if (current === null) {
        problem('destination with no readable service line above it (a grepped or cut listing?)');
        continue;
      }
      records.push(read.destination);
      if (!read.numeric) problem(NOT_NUMERIC);
      continue;
    }

    if (isServiceProto(first) || first === 'FWM') {
      current = null;
      if (listing !== 'default' && listing !== 'stats' && listing !== 'rate') {
        problem(UNSUPPORTED[listing]);
        continue;
      }
      const read = listing === 'default' ? readService(line, tokens) : readCountersService(line, tokens, listing);
      if ('error' in read) {
        problem(read.error);
        continue;
      }
      const s = read.service;
      records.push(s);
      current = ipvsServiceKey(s.proto, s.address, s.port, s.fwmark);
      if (!read.numeric) problem(NOT_NUMERIC);
      continue;
    }

    // Anything else (grep's `--` group separator, `...`, a comment) may
    // stand for lines that were cut, a service line among them, so the
    // destinations after it are not attributed to the service above it.
    current = null;
    problem(trimmed === '--' ? 'grep group separator (`--`), not ipvsadm output' : 'not an ipvsadm -Ln line');
  }
  return { records, problems };
}
