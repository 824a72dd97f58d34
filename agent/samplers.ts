// A sampler is a read (through HostIO) plus a pure parser. The same samplers
// run live, in `conntrail replay` (HostIO serving recorded outputs) and in
// tests, so recorded IPVS timelines go through exactly the live code path.
import { ConntrailError, isConntrailError } from '../contract/errors.ts';
import type { Problem, RecordOf, SourceName, SourceSpec } from '../contract/sources.ts';
import type { HostIO } from './host-io.ts';
import { parseAddrs } from './sources/addrs.ts';
import { parseConntrackStat } from './sources/conntrack-stat.ts';
import { parseIpset } from './sources/ipset.ts';
import { parseIptables } from './sources/iptables.ts';
import { parseIpvs } from './sources/ipvs.ts';
import { parseIpvsConn } from './sources/ipvs-conn.ts';
import { parseLinks } from './sources/links.ts';
import { parseNft } from './sources/nft.ts';
import { parseRoutes } from './sources/routes.ts';
import { parseRules } from './sources/rules.ts';
import { parseSysctl, sysctlNameOfPath } from './sources/sysctl.ts';
import type { Diff } from '../contract/diff.ts';
import { compactConntrackSpec, createConntrackLineCache, expandConntrack, type CompactEntry } from './conntrack-cache.ts';

/** One verbatim output a sample was made from: what a bundle stores and `replay` reads. */
export interface Reading {
  readonly via: string;
  /** null for a source too large to keep a copy of (conntrack). */
  readonly text: string | null;
}

export interface Sample<N extends SourceName> {
  readonly source: N;
  readonly readings: readonly Reading[];
  readonly records: readonly RecordOf<N>[];
  readonly problems: readonly Problem[];
  /** Set by a source kept compact on the agent (conntrack): records are then empty. */
  readonly compact?: Compact<N>;
}

/**
 * A source the agent keeps in its own compact form, diffed with its own spec
 * (the same generic diff) and expanded into contract records only when sent.
 */
export interface Compact<N extends SourceName> {
  readonly keyed: ReadonlyMap<string, unknown>;
  /**
   * The source's own diff against its previous read, when it keeps `keyed` in
   * place (conntrack). Made only when called, before the next sample: a tick
   * that ends in a snapshot never asks for it.
   */
  readonly diff?: () => Diff<unknown>;
  /** The source lost track of what it reported (a read failed half way): resynchronise rather than send `diff`. */
  readonly restarted?: boolean;
  readonly spec: SourceSpec<unknown>;
  expand(kept: unknown): RecordOf<N> | null;
}

export interface Sampler<N extends SourceName = SourceName> {
  readonly source: N;
  /** Rejects with a ConntrailError: TOOL_MISSING / SOURCE_UNAVAILABLE (skip this source) or SOURCE_FAILED (this tick only). */
  sample(io: HostIO): Promise<Sample<N>>;
}

const TIMEOUT_MS = 5_000;

function numberLines(problems: readonly Problem[], offset: number): Problem[] {
  return offset === 0 ? [...problems] : problems.map((p) => ({ ...p, line: p.line + offset }));
}

/** Reads several outputs and parses each; problem line numbers stay relative to their own output, prefixed by `via` in the reason. */
function merged<N extends SourceName>(source: N, parts: readonly { reading: Reading; records: readonly RecordOf<N>[]; problems: readonly Problem[] }[]): Sample<N> {
  const records: RecordOf<N>[] = [];
  const problems: Problem[] = [];
  for (const p of parts) {
    for (const r of p.records) records.push(r);
    for (const pr of numberLines(p.problems, 0)) problems.push(parts.length > 1 ? { ...pr, reason: `${p.reading.via}: ${pr.reason}` } : pr);
  }
  return { source, readings: parts.map((p) => p.reading), records, problems };
}

function command<N extends SourceName>(source: N, argv: readonly string[], parse: (text: string) => { records: readonly RecordOf<N>[]; problems: readonly Problem[] }): Sampler<N> {
  return {
    source,
    async sample(io) {
      const out = await io.run(argv, { timeoutMs: TIMEOUT_MS });
      const reading = { via: argv.join(' '), text: out.stdout };
      return merged(source, [{ reading, ...parse(out.stdout) }]);
    },
  };
}

function file<N extends SourceName>(source: N, path: string, parse: (text: string) => { records: readonly RecordOf<N>[]; problems: readonly Problem[] }): Sampler<N> {
  return {
    source,
    async sample(io) {
      const text = await io.readFile(path);
      return merged(source, [{ reading: { via: path, text }, ...parse(text) }]);
    },
  };
}

/**
 * kube-proxy programs whichever iptables backend the node's iptables binary
 * uses; a node can hold both (the nft variant warns "iptables-legacy tables
 * present"). Sample every backend that holds KUBE-* chains, and say which.
 * In a dual-stack or IPv6 cluster kube-proxy writes the same chains with
 * ip6tables, so each family is read the same way, and records say which.
 */
function iptablesSampler(): Sampler<'iptables'> {
  const families = [
    {
      family: 'ipv4' as const,
      backends: [
        { backend: 'nft' as const, argv: ['iptables-nft-save', '-c'] },
        { backend: 'legacy' as const, argv: ['iptables-legacy-save', '-c'] },
      ],
      // Older distributions ship only `iptables-save`, whose backend we cannot name.
      fallback: ['iptables-save', '-c'],
    },
    {
      family: 'ipv6' as const,
      backends: [
        { backend: 'nft' as const, argv: ['ip6tables-nft-save', '-c'] },
        { backend: 'legacy' as const, argv: ['ip6tables-legacy-save', '-c'] },
      ],
      fallback: ['ip6tables-save', '-c'],
    },
  ];
  type Output = { family: 'ipv4' | 'ipv6'; backend: 'nft' | 'legacy' | null; reading: { via: string; text: string } };
  return {
    source: 'iptables',
    async sample(io) {
      const chosen: Output[] = [];
      let missing: unknown = null;
      for (const f of families) {
        const outputs: Output[] = [];
        for (const b of f.backends) {
          try {
            const out = await io.run(b.argv, { timeoutMs: TIMEOUT_MS });
            outputs.push({ family: f.family, backend: b.backend, reading: { via: b.argv.join(' '), text: out.stdout } });
          } catch (err) {
            if (!isConntrailError(err, 'TOOL_MISSING')) throw err;
          }
        }
        if (outputs.length === 0) {
          try {
            const out = await io.run(f.fallback, { timeoutMs: TIMEOUT_MS });
            outputs.push({ family: f.family, backend: null, reading: { via: f.fallback.join(' '), text: out.stdout } });
          } catch (err) {
            // A family with no tool at all is left out; the source is missing only when both are.
            if (!isConntrailError(err, 'TOOL_MISSING')) throw err;
            missing ??= err;
            continue;
          }
        }
        const withKube = outputs.filter((o) => o.reading.text.includes(':KUBE-'));
        chosen.push(...(withKube.length > 0 ? withKube : outputs.slice(0, 1)));
      }
      if (chosen.length === 0) throw missing;
      return merged('iptables', chosen.map((o) => ({ reading: o.reading, ...parseIptables(o.reading.text, o.backend, o.family) })));
    },
  };
}

/** Tables iptables-nft owns: they are sampled through iptables-save already. */
const IPTABLES_NFT_TABLES = new Set(['filter', 'nat', 'mangle', 'raw', 'security']);

function nftSampler(): Sampler<'nft'> {
  const argv = ['nft', '-j', 'list', 'ruleset'];
  return {
    source: 'nft',
    async sample(io) {
      const out = await io.run(argv, { timeoutMs: TIMEOUT_MS });
      const parsed = parseNft(out.stdout);
      const records = parsed.records.filter((r) => !((r.family === 'ip' || r.family === 'ip6') && IPTABLES_NFT_TABLES.has(r.table)));
      return { source: 'nft', readings: [{ via: argv.join(' '), text: out.stdout }], records, problems: parsed.problems };
    },
  };
}

const CONNTRACK_COUNT = '/proc/sys/net/netfilter/nf_conntrack_count';

/** Newer kernels often lack the procfs file; `conntrack -L` reads the same table over netlink. */
function conntrackSampler(): Sampler<'conntrack'> {
  const cache = createConntrackLineCache();
  return {
    source: 'conntrack',
    async sample(io) {
      let via = '/proc/net/nf_conntrack';
      let parsed: ReturnType<typeof cache.parse>;
      // Absent from recordings and old kernels: the cache then grows as it reads.
      const count = Number.parseInt(await io.readFile(CONNTRACK_COUNT).catch(() => '0'), 10);
      try {
        const reading = cache.begin(io.now(), Number.isFinite(count) ? count : 0);
        try {
          await io.readLinesWith(via, (lines) => reading.feed(lines));
        } catch (err) {
          // Half a table was taken in: start over, and have the agent resynchronise.
          cache.reset();
          throw err;
        }
        parsed = reading.finish();
      } catch (err) {
        if (!isConntrailError(err, 'SOURCE_UNAVAILABLE')) throw err;
        const argv = ['conntrack', '-L', '-o', 'extended'];
        via = argv.join(' ');
        parsed = cache.parse(Buffer.from((await io.run(argv, { timeoutMs: TIMEOUT_MS })).stdout, 'latin1'), io.now());
      }
      // The table's text is not kept: at 250k entries it is 40 MB a second. Each kept entry holds its own line.
      const reading: Reading = { via, text: null };
      const read = parsed;
      const compact: Compact<'conntrack'> = {
        keyed: read.keyed,
        diff: () => read.diff,
        restarted: read.restarted,
        spec: compactConntrackSpec,
        expand: (kept) => expandConntrack(kept as CompactEntry),
      };
      return { source: 'conntrack', readings: [reading], records: [], problems: read.problems, compact };
    },
  };
}

/**
 * A command that fails the same way every time on a node without the kernel
 * feature it reads: that is SOURCE_UNAVAILABLE (skip the source), not a
 * failed tick. `what` names the feature in the message.
 */
function unavailableWhen<N extends SourceName>(inner: Sampler<N>, stderr: RegExp, what: string): Sampler<N> {
  return {
    source: inner.source,
    async sample(io) {
      try {
        return await inner.sample(io);
      } catch (err) {
        if (isConntrailError(err, 'SOURCE_FAILED') && stderr.test(err.message))
          throw new ConntrailError('SOURCE_UNAVAILABLE', `${what} is not available on this node (${err.message})`, { cause: err });
        throw err;
      }
    },
  };
}

/** `ipvsadm` answers "Protocol not available" (or similar) on a node without the ip_vs module. */
const IPVS_MISSING = /Protocol not available|Can't initialize ipvs|Permission denied|Operation not permitted/i;

/**
 * `ipset` without the ip_set module (or nfnetlink) cannot open its netlink
 * session ("Cannot open session to kernel."); without CAP_NET_ADMIN the kernel
 * answers "Kernel error received: Operation not permitted"; a kernel built
 * without ipset answers "Invalid argument" (balena-os/balena-os#68). An ipset
 * older than the one that created the sets (kube-proxy's image ships its own)
 * cannot print them: "Kernel and userspace incompatible: settype hash:ip,port
 * with revision 6 not supported by userspace" (lib/session.c), every time.
 */
const IPSET_MISSING = /Cannot open session to kernel|Operation not permitted|Permission denied|Kernel error received: (Invalid argument|Protocol not supported|Address family not supported)|Kernel and userspace incompatible/i;

function routesSampler(): Sampler<'routes'> {
  return {
    source: 'routes',
    async sample(io) {
      const parts = [];
      for (const [family, argv] of [
        ['inet', ['ip', '-4', 'route', 'show', 'table', 'all']],
        ['inet6', ['ip', '-6', 'route', 'show', 'table', 'all']],
      ] as const) {
        const out = await io.run(argv, { timeoutMs: TIMEOUT_MS });
        parts.push({ reading: { via: argv.join(' '), text: out.stdout }, ...parseRoutes(out.stdout, { family }) });
      }
      return merged('routes', parts);
    },
  };
}

function rulesSampler(): Sampler<'rules'> {
  return {
    source: 'rules',
    async sample(io) {
      const parts = [];
      for (const [family, argv] of [
        ['inet', ['ip', '-4', 'rule', 'show']],
        ['inet6', ['ip', '-6', 'rule', 'show']],
      ] as const) {
        const out = await io.run(argv, { timeoutMs: TIMEOUT_MS });
        parts.push({ reading: { via: argv.join(' '), text: out.stdout }, ...parseRules(out.stdout, { family }) });
      }
      return merged('rules', parts);
    },
  };
}

/** The knobs that decide the seeds' failures (see README "Kernel knobs"). */
export const SYSCTL_PATHS = [
  '/proc/sys/kernel/osrelease',
  '/proc/sys/net/ipv4/vs/conn_reuse_mode',
  '/proc/sys/net/ipv4/vs/expire_nodest_conn',
  '/proc/sys/net/ipv4/vs/expire_quiescent_template',
  '/proc/sys/net/ipv4/vs/conntrack',
  '/proc/sys/net/ipv4/ip_local_port_range',
  '/proc/sys/net/ipv4/ip_forward',
  '/proc/sys/net/ipv4/tcp_tw_reuse',
  '/proc/sys/net/netfilter/nf_conntrack_count',
  '/proc/sys/net/netfilter/nf_conntrack_max',
  '/proc/sys/net/netfilter/nf_conntrack_buckets',
  '/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait',
  '/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal',
  '/proc/sys/net/netfilter/nf_conntrack_udp_timeout',
  '/proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream',
] as const;
const PER_INTERFACE = ['accept_local', 'rp_filter', 'log_martians', 'route_localnet'] as const;

function sysctlSampler(): Sampler<'sysctl'> {
  return {
    source: 'sysctl',
    async sample(io) {
      const interfaces = await io.listDir('/proc/sys/net/ipv4/conf');
      const paths: string[] = [...SYSCTL_PATHS];
      for (const ifname of interfaces) for (const knob of PER_INTERFACE) paths.push(`/proc/sys/net/ipv4/conf/${ifname}/${knob}`);
      const lines: string[] = [];
      for (const path of paths) {
        try {
          const value = (await io.readFile(path)).trim().replace(/\s+/g, '\t');
          lines.push(`${sysctlNameOfPath(path)} = ${value}`);
        } catch (err) {
          // A knob this kernel lacks (no ip_vs module: no net.ipv4.vs.*) is simply absent.
          if (!isConntrailError(err, 'SOURCE_UNAVAILABLE')) throw err;
        }
      }
      const text = lines.length > 0 ? `${lines.join('\n')}\n` : '';
      return merged('sysctl', [{ reading: { via: '/proc/sys', text }, ...parseSysctl(text) }]);
    },
  };
}

export function createSamplers(): Sampler[] {
  const all: Sampler<SourceName>[] = [
    iptablesSampler(),
    nftSampler(),
    unavailableWhen(command('ipvs', ['ipvsadm', '-Ln'], parseIpvs), IPVS_MISSING, 'IPVS'),
    unavailableWhen(command('ipvs-conn', ['ipvsadm', '-Lnc'], parseIpvsConn), IPVS_MISSING, 'IPVS'),
    unavailableWhen(command('ipset', ['ipset', 'save'], parseIpset), IPSET_MISSING, 'ipset'),
    conntrackSampler(),
    routesSampler(),
    command('addrs', ['ip', '-o', 'addr', 'show'], parseAddrs),
    command('links', ['ip', '-o', 'link', 'show'], parseLinks),
    rulesSampler(),
    sysctlSampler(),
    file('conntrack-stat', '/proc/net/stat/nf_conntrack', parseConntrackStat),
    file('rt-cache-stat', '/proc/net/stat/rt_cache', parseConntrackStat),
  ];
  return all;
}
