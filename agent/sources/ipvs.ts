// `ipvsadm -Ln` virtual servers and their real servers (FORMATS.md §2,
// ipvsadm.c list_all(), print_title(), print_service_entry()):
//   IP Virtual Server version 1.2.1 (size=4096)        (not with -t/-u/-f ADDR)
//   Prot LocalAddress:Port Scheduler Flags
//     -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
//   TCP  10.96.0.1:443 rr persistent 10800
//     -> 10.0.0.5:6443                Masq    1      3          0
// Lines are read by whitespace, since pasted copies lose the padding. The
// `--stats`, `--rate`, `--thresholds` and `--persistent-conn` listings print
// other columns: their lines are reported, never read as the default one.
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

const UNSUPPORTED: Record<Exclude<Listing, 'default'>, string> = {
  stats: '`ipvsadm -Ln --stats` listing (traffic counters, no scheduler, forward method or weight)',
  rate: '`ipvsadm -Ln --rate` listing (rates, no scheduler, forward method or weight)',
  thresholds: '`ipvsadm -Ln --thresholds` listing (no forward method or weight)',
  'persistent-conn': '`ipvsadm -Ln --persistent-conn` listing (no forward method)',
  'tun-info': '`ipvsadm -Ln --tun-info` listing (an extra TunnelInfo column)',
};

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

/**
 * `%s %s` name and scheduler, then the suffix of print_service_entry():
 * ` (flag,…)` scheduler flags (1.31), ` persistent N`, ` mask M`, ` pe NAME`,
 * ` ops`. The name is `TCP  addr:port` (1.26 prints every non-TCP service
 * as UDP), `SCTP addr:port` (1.31), `FWM  N` or `FWM  N IPv6`.
 */
function readService(line: string, tokens: readonly string[]): ServiceRead {
  const [proto = '', name] = tokens;
  const kind = proto === 'FWM' ? 'FWM' : isServiceProto(proto) ? proto : null;
  if (kind === null) return { error: `${JSON.stringify(proto)} is not a service protocol` };
  if (name === undefined) return { error: 'service line cut short' };
  let k = 2;
  let address: string | null = null;
  let port: number | null = null;
  let fwmark: number | null = null;
  const flags: string[] = [];
  let numeric = true;
  if (proto === 'FWM') {
    if (!DECIMAL.test(name)) return { error: `FWM service with a mark that is not a number: ${JSON.stringify(name)}` };
    fwmark = Number(name);
    if (tokens[k] === 'IPv6') {
      // Kept as a flag: a v4 and a v6 service may share a mark.
      flags.push('IPv6');
      k++;
    }
  } else {
    const ep = endpoint(name);
    address = ep.address;
    port = ep.port;
    numeric = address !== null && port !== null;
  }
  const scheduler = tokens[k++];
  if (scheduler === undefined) return { error: 'service line has no scheduler (cut short?)' };
  if (!SCHEDULER.test(scheduler)) {
    return {
      error: DECIMAL.test(scheduler) || /^\d+[KMGT]$/.test(scheduler)
        ? 'numbers where the scheduler belongs: a --stats or --rate listing, which this parser does not read'
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
    raw: line,
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
      error: DECIMAL.test(forward) || /^\d+[KMGT]$/.test(forward)
        ? 'numbers where the forward method belongs: a --stats, --rate, --thresholds or --persistent-conn listing, which this parser does not read'
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
      raw: line,
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
      if (listing !== 'default') {
        problem(UNSUPPORTED[listing]);
        continue;
      }
      // The line's own shape first: a --stats line under an unreadable
      // --stats service line should say so, not blame the service.
      const read = readDestination(line, tokens, current ?? '');
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
      if (listing !== 'default') {
        problem(UNSUPPORTED[listing]);
        continue;
      }
      const read = readService(line, tokens);
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
