// The ways a source is sampled, each taking the reads a source declares in
// agent/sources/registry.ts: one output parsed whole, one command per address
// family, iptables' backends with their fallback, conntrack's procfs table
// with its netlink fallback, the knobs under /proc/sys. A strategy runs only
// the reads it is given, so the registry's list of reads is the whole of what
// the agent asks of the node.
import { ConntrailError, isConntrailError } from '../contract/errors.ts';
import type { ParseResult, Problem, RecordOf, SourceName } from '../contract/sources.ts';
import { compactConntrackSpec, createConntrackLineCache, expandConntrack, type CompactEntry } from './conntrack-cache.ts';
import type { CommandRead, Compact, FileRead, Read, Reading, Sample, Sampler, SysctlRead } from './samplers.ts';
import { parseIptables, type IptablesBackend, type IptablesFamily } from './sources/iptables.ts';
import { parseNft } from './sources/nft.ts';
import { parseSysctl, sysctlNameOfPath } from './sources/sysctl.ts';

export type Parser<N extends SourceName> = (text: string) => ParseResult<RecordOf<N>>;

/** How a source is sampled, with every read it may make. */
export interface Plan<N extends SourceName> {
  readonly reads: readonly Read[];
  /** `parse` is the source's own parser (what `conntrail parse` runs); strategies that parse with context use their own. */
  create(source: N, parse: Parser<N>): Sampler<N>;
}

const TIMEOUT_MS = 5_000;

/** What HostIO is asked for: a command line or a path. Recordings are keyed by it too. */
export function viaOf(read: CommandRead | FileRead): string {
  return read.kind === 'command' ? read.argv.join(' ') : read.path;
}

async function readText(io: Parameters<Sampler['sample']>[0], read: CommandRead | FileRead): Promise<string> {
  return read.kind === 'command' ? (await io.run(read.argv, { timeoutMs: TIMEOUT_MS })).stdout : io.readFile(read.path);
}

/** Several outputs parsed each; problem line numbers stay relative to their own output, prefixed by `via` in the reason. */
function merged<N extends SourceName>(source: N, parts: readonly { reading: Reading; records: readonly RecordOf<N>[]; problems: readonly Problem[] }[]): Sample<N> {
  const records: RecordOf<N>[] = [];
  const problems: Problem[] = [];
  for (const p of parts) {
    for (const r of p.records) records.push(r);
    for (const pr of p.problems) problems.push(parts.length > 1 ? { ...pr, reason: `${p.reading.via}: ${pr.reason}` } : pr);
  }
  return { source, readings: parts.map((p) => p.reading), records, problems };
}

/** One command or file, parsed whole by the source's parser. */
export function single<N extends SourceName>(read: CommandRead | FileRead): Plan<N> {
  return {
    reads: [read],
    create: (source, parse) => ({
      source,
      async sample(io) {
        const text = await readText(io, read);
        return merged(source, [{ reading: { via: viaOf(read), text }, ...parse(text) }]);
      },
    }),
  };
}

/**
 * A command that fails the same way every time on a node without the kernel
 * feature it reads: that is SOURCE_UNAVAILABLE (skip the source), not a
 * failed tick. `what` names the feature in the message.
 */
export function unavailableWhen<N extends SourceName>(plan: Plan<N>, stderr: RegExp, what: string): Plan<N> {
  return {
    reads: plan.reads,
    create(source, parse) {
      const inner = plan.create(source, parse);
      return {
        source,
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
    },
  };
}

/** One command per address family (`ip -4 …`, `ip -6 …`), each parsed with its family. */
export function perFamily<N extends SourceName, F extends string>(parts: readonly { family: F; read: CommandRead }[], parse: (text: string, family: F) => ParseResult<RecordOf<N>>): Plan<N> {
  return {
    reads: parts.map((p) => p.read),
    create: (source) => ({
      source,
      async sample(io) {
        const out = [];
        for (const { family, read } of parts) {
          const text = await readText(io, read);
          out.push({ reading: { via: viaOf(read), text }, ...parse(text, family) });
        }
        return merged(source, out);
      },
    }),
  };
}

export interface IptablesFamilyReads {
  readonly family: IptablesFamily;
  readonly backends: readonly { readonly backend: IptablesBackend; readonly read: CommandRead }[];
  /** Older distributions ship only `iptables-save`, whose backend we cannot name. */
  readonly fallback: CommandRead;
}

/**
 * kube-proxy programs whichever iptables backend the node's iptables binary
 * uses; a node can hold both (the nft variant warns "iptables-legacy tables
 * present"). Sample every backend that holds KUBE-* chains, and say which.
 * In a dual-stack or IPv6 cluster kube-proxy writes the same chains with
 * ip6tables, so each family is read the same way, and records say which.
 */
export function iptablesPlan(families: readonly IptablesFamilyReads[]): Plan<'iptables'> {
  type Output = { family: IptablesFamily; backend: IptablesBackend | null; reading: { via: string; text: string } };
  return {
    reads: families.flatMap((f) => [...f.backends.map((b) => b.read), f.fallback]),
    create: (source) => ({
      source,
      async sample(io) {
        const chosen: Output[] = [];
        let missing: unknown = null;
        for (const f of families) {
          const outputs: Output[] = [];
          for (const b of f.backends) {
            try {
              const text = await readText(io, b.read);
              outputs.push({ family: f.family, backend: b.backend, reading: { via: viaOf(b.read), text } });
            } catch (err) {
              if (!isConntrailError(err, 'TOOL_MISSING')) throw err;
            }
          }
          if (outputs.length === 0) {
            try {
              const text = await readText(io, f.fallback);
              outputs.push({ family: f.family, backend: null, reading: { via: viaOf(f.fallback), text } });
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
        return merged(source, chosen.map((o) => ({ reading: o.reading, ...parseIptables(o.reading.text, o.backend, o.family) })));
      },
    }),
  };
}

/** Tables iptables-nft owns: they are sampled through iptables-save already. */
const IPTABLES_NFT_TABLES = new Set(['filter', 'nat', 'mangle', 'raw', 'security']);

export function nftPlan(read: CommandRead): Plan<'nft'> {
  return {
    reads: [read],
    create: (source) => ({
      source,
      async sample(io) {
        const text = await readText(io, read);
        const parsed = parseNft(text);
        const records = parsed.records.filter((r) => !((r.family === 'ip' || r.family === 'ip6') && IPTABLES_NFT_TABLES.has(r.table)));
        return { source, readings: [{ via: viaOf(read), text }], records, problems: parsed.problems };
      },
    }),
  };
}

/**
 * Newer kernels often lack the procfs file; `conntrack -L` reads the same
 * table over netlink. `count` sizes the cache before the read; it is absent
 * from recordings (other than through sysctl.txt) and old kernels, and the
 * cache then grows as it reads.
 */
export function conntrackPlan(reads: { table: FileRead; fallback: CommandRead; count: FileRead }): Plan<'conntrack'> {
  return {
    reads: [reads.table, reads.fallback, reads.count],
    create(source) {
      const cache = createConntrackLineCache();
      return {
        source,
        async sample(io) {
          let via = viaOf(reads.table);
          let parsed: ReturnType<typeof cache.parse>;
          const count = Number.parseInt(await io.readFile(reads.count.path).catch(() => '0'), 10);
          try {
            const reading = cache.begin(io.now(), Number.isFinite(count) ? count : 0);
            try {
              await io.readLinesWith(reads.table.path, (lines) => reading.feed(lines));
            } catch (err) {
              // Half a table was taken in: start over, and have the agent resynchronise.
              cache.reset();
              throw err;
            }
            parsed = reading.finish();
          } catch (err) {
            if (!isConntrailError(err, 'SOURCE_UNAVAILABLE')) throw err;
            via = viaOf(reads.fallback);
            parsed = cache.parse(Buffer.from(await readText(io, reads.fallback), 'latin1'), io.now());
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
          return { source, readings: [reading], records: [], problems: read.problems, compact };
        },
      };
    },
  };
}

/**
 * The knobs under /proc/sys that decide the seeds' failures: `paths`, plus
 * `perInterface` knobs for every interface under net/ipv4/conf. A knob this
 * kernel lacks (no ip_vs module: no net.ipv4.vs.*) is simply absent.
 */
export function sysctlPlan(read: SysctlRead, paths: readonly string[], perInterface: readonly string[]): Plan<'sysctl'> {
  return {
    reads: [read],
    create: (source) => ({
      source,
      async sample(io) {
        const interfaces = await io.listDir(`${read.root}/net/ipv4/conf`);
        const all: string[] = [...paths];
        for (const ifname of interfaces) for (const knob of perInterface) all.push(`${read.root}/net/ipv4/conf/${ifname}/${knob}`);
        const lines: string[] = [];
        for (const path of all) {
          try {
            const value = (await io.readFile(path)).trim().replace(/\s+/g, '\t');
            lines.push(`${sysctlNameOfPath(path)} = ${value}`);
          } catch (err) {
            if (!isConntrailError(err, 'SOURCE_UNAVAILABLE')) throw err;
          }
        }
        const text = lines.length > 0 ? `${lines.join('\n')}\n` : '';
        return merged(source, [{ reading: { via: read.root, text }, ...parseSysctl(text) }]);
      },
    }),
  };
}

/**
 * The kernel log, read whole each time (a fresh open starts at the oldest
 * record; nothing is consumed) and parsed into the martian records it holds.
 * Its text is not kept as the reading: the ring holds every other kernel
 * message too, which has no place in a bundle; each kept record holds its own
 * line.
 */
export function kmsgPlan(read: FileRead): Plan<'kmsg'> {
  return {
    reads: [read],
    create: (source, parse) => ({
      source,
      async sample(io) {
        const parsed = parse(await io.readKmsg(read.path));
        return { source, readings: [{ via: read.path, text: null }], records: parsed.records, problems: parsed.problems };
      },
    }),
  };
}
