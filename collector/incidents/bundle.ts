// Incident bundles: everything someone who was not there needs to see what
// happened, and everything conntrail needs to derive every finding again.
// The findings in a bundle are the ones its own timeline yields when replayed
// (same code as `conntrail replay`), so a bundle always agrees with itself.
// Nothing secret goes in: no token, no configuration, only what nodes showed.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, createReadStream, createWriteStream, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { dirname, join, relative } from 'node:path';
import { pino, type Logger } from 'pino';
import * as tar from 'tar';
import { isNodeName, SNAPSHOT_CHUNK, type AgentMessage, type CaptureTool, type SourceChange } from '../../contract/protocol.ts';
import { isSourceName } from '../../contract/sources.ts';
import type { NodeFacts } from '../../contract/records.ts';
import type { FindingLine } from '../detection/aggregate.ts';
import type { Session } from '../receive/collector.ts';
import { createPipeline } from '../pipeline.ts';
import type { EndpointSpan } from '../detection/endpoint-history.ts';
import { iso, tupleText } from '../detection/findings.ts';
import { KubeCatalog, type KubeEvent } from '../kube/catalog.ts';
import type { Incident } from './incidents.ts';
import type { TimelineEntry } from '../state/node-view.ts';
import type { HistoryStore } from '../state/history.ts';
import { renderReport } from '../api/report.ts';

export const BUNDLE_FORMAT = 1;
/**
 * The archive's gzip runs on the collector's thread (tar's zlib is
 * synchronous per chunk), and was a third of a bundle's time. Level 1 takes
 * about half the time of the default 6, for about a third more bytes (10
 * nodes × 10 minutes of churn: 15.5 MB at 6, 21.3 MB at 1).
 */
const GZIP = { level: 1 };

export interface NodeTimeline {
  readonly node: string;
  readonly facts: NodeFacts | null;
  /**
   * The node's steps, the first a snapshot. A bundle reads them once, when
   * it gets to the node (replay and timeline file from the same pass): an
   * array, or a slice read from the store a page at a time, so no node's
   * steps need be held whole.
   */
  readonly entries: Iterable<TimelineEntry>;
}

/** A timeline held whole, as a bundle file holds it. */
export type HeldTimeline = NodeTimeline & { readonly entries: readonly TimelineEntry[] };

/** The replay inside a bundle reads each step once and never slices it again: its history keeps nothing past the last seconds. */
const NO_HISTORY: HistoryStore = {
  *slice() {
    // Nothing is kept to read back.
  },
  has: () => false,
};

export interface Derived {
  readonly findings: FindingLine[];
  /** Endpoints as the nodes' rules programmed them, with the pod the Kubernetes API named for each (when it could). */
  readonly endpoints: (EndpointSpan & { readonly pod?: string | null })[];
}

/**
 * Runs the collector and the detectors over recorded timelines, each starting
 * with a snapshot, and what the Kubernetes API said meanwhile (null: there was
 * no API). The catalog answers "as of time T", so loading it first is the same
 * as having received its events as they came.
 */
export function deriveFindings(timelines: readonly NodeTimeline[], log: Logger = pino({ level: 'silent' }), kubeEvents: readonly KubeEvent[] | null = null): Derived {
  return runToEnd(deriveSteps(timelines, log, kubeEvents));
}

/**
 * The work of a bundle, cut where it may pause: a generator that yields
 * whenever it has run for YIELD_MS, run to its end at once (deriveFindings,
 * bundleFiles) or with the event loop let through at each pause
 * (bundleFilesYielding), so a collector building a bundle of 200 nodes still
 * answers /healthz and its agents meanwhile.
 */
const YIELD_MS = 20;
type Steps<T> = Generator<void, T, void>;

function runToEnd<T>(steps: Steps<T>): T {
  for (;;) {
    const r = steps.next();
    if (r.done === true) return r.value;
  }
}

async function runYielding<T>(steps: Steps<T>): Promise<T> {
  for (;;) {
    const r = steps.next();
    if (r.done === true) return r.value;
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** A clock for pauses: `due()` is true (and restarts) once YIELD_MS have passed. */
function pacer(): { due(): boolean } {
  let since = performance.now();
  return {
    due() {
      const now = performance.now();
      if (now - since < YIELD_MS) return false;
      since = now;
      return true;
    },
  };
}

/** The API's record as a catalog, loaded whole before any step (it answers "as of T"); null without API access. */
function catalogOf(kubeEvents: readonly KubeEvent[] | null): KubeCatalog | null {
  if (kubeEvents === null) return null;
  const kube = new KubeCatalog();
  for (const e of [...kubeEvents].sort((a, b) => a.time - b.time)) kube.apply(e);
  return kube;
}

/** What one node's replay found. */
interface NodeDerived {
  readonly node: string;
  readonly findings: readonly FindingLine[];
  readonly endpoints: Derived['endpoints'];
}

/**
 * One node's replay: a pipeline of its own, fed the node's steps one at a
 * time, then dropped with everything it held (its view, in the compact
 * store where the view keeps one, and what detection derived).
 *
 * A node on its own finds what it finds among all nodes. Detection keeps
 * nothing across nodes that changes a finding: what a specific finding
 * explained (`#explained`) is keyed by node and client, repeats fold per
 * node (the aggregator's key holds the node), and a fold another node's
 * step closes would be closed by this node's next step anyway, before
 * anything is added to it (every finding is at its step's time, and closing
 * only depends on that time). The catalog is shared and only read: it was
 * loaded whole first. What differs is only when a folded line comes out, so
 * the lines of all nodes are put in time order after (mergeFindings).
 */
function nodeReplay(node: string, facts: NodeFacts | null, kube: KubeCatalog | null, log: Logger): { step(entry: TimelineEntry): void; end(): NodeDerived } {
  const findings: FindingLine[] = [];
  let clock = 0;
  const { collector, detection } = createPipeline({ log, now: () => clock, historyMs: Number.MAX_SAFE_INTEGER, kube, onFinding: (l) => findings.push(l), historyStore: NO_HISTORY });
  const session: Session = { node: null, remote: `bundle:${node}`, send: () => undefined };
  const send = (msg: AgentMessage) => collector.accept(session, msg);
  let started = false;
  return {
    step(entry) {
      clock = entry.time;
      if (!started) {
        started = true;
        send({ v: 1, type: 'hello', node, agentVersion: 'bundle', intervalMs: 1000, startedAt: entry.time });
        if (facts !== null) send({ v: 1, type: 'facts', facts });
      }
      if (entry.kind === 'snapshot') {
        for (const c of entry.changes) {
          // Read once: a snapshot step's records may be read out of a compact store at every access (state/node-view.ts).
          const added = c.added;
          const parts = Math.max(1, Math.ceil(added.length / SNAPSHOT_CHUNK));
          for (let part = 0; part < parts; part++)
            send({ v: 1, type: 'snapshot', seq: entry.seq, time: entry.time, source: c.source, part, parts, records: added.slice(part * SNAPSHOT_CHUNK, (part + 1) * SNAPSHOT_CHUNK) });
        }
        send({ v: 1, type: 'snapshot-end', seq: entry.seq, time: entry.time, status: [] });
      } else {
        send({ v: 1, type: 'diff', seq: entry.seq, time: entry.time, changes: entry.changes, status: [] });
      }
    },
    end() {
      // Every fold still open is closed (`all`): the time given does not matter.
      detection.flush(clock + 3_600_000);
      const endpoints = detection.history(node).all().map((span) => {
        if (kube === null) return span;
        const address = /^\[?([^\]]+?)\]?:\d+$/.exec(span.endpoint)?.[1];
        return { ...span, pod: address === undefined ? null : (kube.podAt(address, span.firstSeen)?.span.pod ?? null) };
      });
      return { node, findings, endpoints };
    },
  };
}

/**
 * All nodes' finding lines in time order; lines at the same time in node
 * name order (the order a bundle's replay reads its timelines in, whatever
 * order they were made in), each node's in the order it logged them.
 */
function mergeFindings(nodes: readonly NodeDerived[]): FindingLine[] {
  const byName = [...nodes].sort((a, b) => a.node.localeCompare(b.node));
  // A stable sort: ties keep node order, then each node's own order.
  return byName.flatMap((n) => n.findings).sort((a, b) => a.time - b.time);
}

function* deriveSteps(timelines: readonly NodeTimeline[], log: Logger, kubeEvents: readonly KubeEvent[] | null): Steps<Derived> {
  const pace = pacer();
  const kube = catalogOf(kubeEvents);
  const nodes: NodeDerived[] = [];
  for (const t of timelines) {
    const replay = nodeReplay(t.node, t.facts, kube, log);
    for (const entry of t.entries) {
      replay.step(entry);
      if (pace.due()) yield;
    }
    nodes.push(replay.end());
  }
  return { findings: mergeFindings(nodes), endpoints: nodes.flatMap((n) => n.endpoints) };
}

export interface BundleInput {
  readonly from: number;
  readonly to: number;
  readonly timelines: readonly NodeTimeline[];
  readonly incident: Incident | null;
  readonly version: string;
  /** Capture output by node and tool (tcpdump, conntrack-events). */
  readonly captures?: ReadonlyMap<string, ReadonlyMap<string, { readonly lines: readonly string[]; readonly ended: boolean; readonly error: string | null }>>;
  /** pcap files by node. */
  readonly pcaps?: ReadonlyMap<string, Buffer>;
  /** What the Kubernetes API said over the window (its state at the start, then each change); null without API access. */
  readonly kubernetes?: readonly KubeEvent[] | null;
}

const jsonl = (rows: readonly unknown[]): string => rows.map((r) => `${JSON.stringify(r)}\n`).join('');

/**
 * Every name a bundle entry can have. Entries are made only here, from
 * validated parts (a Kubernetes node name, a source name, a capture tool), so
 * a name an agent chose can never become `..` or a slash in a path: a hello
 * as `../../x` is refused at decode, and would be refused here again.
 */
export const BUNDLE_ENTRIES = {
  fixed: ['findings.jsonl', 'kubernetes.jsonl', 'endpoints.jsonl', 'summary.md', 'report.html', 'manifest.json'] as const,
  timeline: (node: string): string | null => (isNodeName(node) ? `timeline/${node}.jsonl` : null),
  snapshot: (node: string, source: string): string | null => (isNodeName(node) && isSourceName(source) ? `snapshots/${node}/${source}.txt` : null),
  node: (node: string): string | null => (isNodeName(node) ? `nodes/${node}.json` : null),
  capture: (node: string, tool: string): string | null => (isNodeName(node) && CAPTURE_TOOLS.has(tool) ? `capture/${node}/${tool}.txt` : null),
  pcap: (node: string): string | null => (isNodeName(node) ? `capture/${node}/tcpdump.pcap` : null),
};
const CAPTURE_TOOLS: ReadonlySet<string> = new Set<CaptureTool>(['tcpdump', 'conntrack-events']);
const NODE = '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*';
/** The same names as patterns: what packBundle checks every path against before it writes a file. */
const ENTRY_PATTERN = new RegExp(`^(${BUNDLE_ENTRIES.fixed.map((f) => f.replace('.', '\\.')).join('|')}|timeline/${NODE}\\.jsonl|snapshots/${NODE}/[a-z0-9-]+\\.txt|nodes/${NODE}\\.json|capture/${NODE}/(tcpdump|conntrack-events)\\.txt|capture/${NODE}/tcpdump\\.pcap)$`);

/** True for a path a bundle entry may have. */
export function isBundleEntry(path: string): boolean {
  return ENTRY_PATTERN.test(path) && !path.split('/').some((seg) => seg === '..' || seg === '.' || seg === '');
}

/** Where a bundle's files go as they are made: appended to chunk by chunk, each file's size and hash kept for the manifest. */
interface Sink {
  write(path: string, chunk: string | Buffer): void;
  /** Every file written, with its bytes and sha256. */
  written(): [string, { bytes: number; sha256: string }][];
}

class Tally {
  bytes = 0;
  readonly hash: Hash = createHash('sha256');
  add(chunk: string | Buffer): void {
    this.bytes += typeof chunk === 'string' ? Buffer.byteLength(chunk) : chunk.length;
    this.hash.update(chunk);
  }
}

/** Files kept in memory (bundleFiles: tests, and small bundles). */
class MemorySink implements Sink {
  readonly chunks = new Map<string, (string | Buffer)[]>();
  write(path: string, chunk: string | Buffer): void {
    let list = this.chunks.get(path);
    if (list === undefined) this.chunks.set(path, (list = []));
    list.push(chunk);
  }
  written(): [string, { bytes: number; sha256: string }][] {
    return [...this.chunks].map(([p, list]) => {
      const t = new Tally();
      for (const c of list) t.add(c);
      return [p, { bytes: t.bytes, sha256: t.hash.digest('hex') }];
    });
  }
  files(): Map<string, string | Buffer> {
    return new Map([...this.chunks].map(([p, list]) => [p, list.length === 1 && Buffer.isBuffer(list[0]) ? list[0] : list.every((c) => typeof c === 'string') ? list.join('') : Buffer.concat(list.map((c) => (typeof c === 'string' ? Buffer.from(c) : c)))]));
  }
}

/** Files written under `root` as they are made (a collector's bundles: a node's timeline is never held whole). */
class DiskSink implements Sink {
  readonly #root: string;
  readonly #tallies = new Map<string, Tally>();
  #open: { path: string; fd: number } | null = null;
  constructor(root: string) {
    this.#root = root;
  }
  write(path: string, chunk: string | Buffer): void {
    // Checked before anything is written, as packBundle checks its map.
    if (!isBundleEntry(path)) throw new Error(`${JSON.stringify(path.slice(0, 300))} is not a bundle entry name`);
    if (this.#open?.path !== path) {
      this.close();
      const full = join(this.#root, path);
      mkdirSync(dirname(full), { recursive: true });
      this.#open = { path, fd: openSync(full, this.#tallies.has(path) ? 'a' : 'w') };
    }
    let t = this.#tallies.get(path);
    if (t === undefined) this.#tallies.set(path, (t = new Tally()));
    t.add(chunk);
    if (typeof chunk === 'string') writeSync(this.#open.fd, chunk);
    else writeSync(this.#open.fd, chunk);
  }
  close(): void {
    if (this.#open !== null) closeSync(this.#open.fd);
    this.#open = null;
  }
  written(): [string, { bytes: number; sha256: string }][] {
    return [...this.#tallies].map(([p, t]) => [p, { bytes: t.bytes, sha256: t.hash.copy().digest('hex') }]);
  }
}

/** The bundle's files, by path. A timeline or capture under a name that is not a node name is left out (and said so in the manifest). */
export function bundleFiles(input: BundleInput): Map<string, string | Buffer> {
  const sink = new MemorySink();
  runToEnd(bundleSteps(input, sink));
  return sink.files();
}

/** bundleFiles, letting the event loop through every YIELD_MS of work. */
export async function bundleFilesYielding(input: BundleInput): Promise<Map<string, string | Buffer>> {
  const sink = new MemorySink();
  await runYielding(bundleSteps(input, sink));
  return sink.files();
}

/**
 * The bundle packed as a .tar.gz, its files written to a temporary
 * directory as they are made (a timeline a step at a time, read from the
 * store by its iterator), with the event loop let through every YIELD_MS.
 */
/**
 * A packed bundle: the .tar.gz on disk in a temp dir of its own, read once
 * through `stream`, and the dir removed when that stream closes (ends, fails
 * or is destroyed). At 200 nodes a 10-minute bundle is ~100 MB: held as a
 * Buffer (and concatenated from tar's chunks) it took ~200 MB of RSS on top
 * of everything the collector holds.
 */
export interface PackedBundle {
  readonly bytes: number;
  readonly stream: Readable;
}

export async function packBundleStreaming(input: BundleInput, prefix: string): Promise<PackedBundle> {
  if (!/^conntrail-[A-Za-z0-9._-]{1,100}$/.test(prefix)) throw new Error(`bundle prefix ${JSON.stringify(prefix.slice(0, 120))} is not a bundle name`);
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-bundle-'));
  const remove = (): void => rmSync(dir, { recursive: true, force: true });
  try {
    const sink = new DiskSink(join(dir, prefix));
    try {
      await runYielding(bundleSteps(input, sink));
    } finally {
      sink.close();
    }
    // The archive sits beside the tree it is made from, not in it.
    const file = join(dir, 'bundle.tar.gz');
    await pipeline(tar.c({ gzip: GZIP, cwd: dir, portable: true }, [prefix]) as unknown as Readable, createWriteStream(file));
    rmSync(join(dir, prefix), { recursive: true, force: true });
    const bytes = statSync(file).size;
    const stream = createReadStream(file);
    stream.once('close', remove);
    return { bytes, stream };
  } catch (err) {
    remove();
    throw err;
  }
}

async function tarOf(dir: string, prefix: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  const stream = tar.c({ gzip: GZIP, cwd: dir, portable: true }, [prefix]);
  for await (const chunk of stream as AsyncIterable<Buffer>) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks);
}

function* bundleSteps(input: BundleInput, sink: Sink): Steps<void> {
  const pace = pacer();
  const skipped: string[] = [];
  const put = (path: string | null, what: string, content: string | Buffer): void => {
    if (path === null) skipped.push(what.slice(0, 300));
    else sink.write(path, content);
  };
  const timelines = input.timelines.filter((t) => {
    const ok = isNodeName(t.node);
    if (!ok) skipped.push(`timeline of ${JSON.stringify(String(t.node).slice(0, 300))}: not a node name`);
    return ok;
  });
  // Node by node, each read once: its steps go to the timeline file and to its own replay as they come from the store, and only its findings outlive it.
  const log = pino({ level: 'silent' });
  const kube = catalogOf(input.kubernetes ?? null);
  const nodes: NodeDerived[] = [];
  for (const t of timelines) {
    if (pace.due()) yield;
    const path = BUNDLE_ENTRIES.timeline(t.node);
    if (path === null) skipped.push(`timeline of ${t.node}`);
    const replay = nodeReplay(t.node, t.facts, kube, log);
    let first = true;
    for (const e of t.entries) {
      if (path !== null) sink.write(path, `${JSON.stringify(e)}\n`);
      // The starting state's files come from the first step, so it need not be kept past it.
      if (first) nodeFiles(t, e.kind === 'snapshot' ? e.changes : [], put);
      first = false;
      replay.step(e);
      if (pace.due()) yield;
    }
    if (first) {
      if (path !== null) sink.write(path, '');
      nodeFiles(t, [], put);
    }
    nodes.push(replay.end());
  }
  const derived: Derived = { findings: mergeFindings(nodes), endpoints: nodes.flatMap((n) => n.endpoints) };
  nodes.length = 0;
  sink.write('findings.jsonl', jsonl(derived.findings));
  if (input.kubernetes) sink.write('kubernetes.jsonl', jsonl(input.kubernetes));
  sink.write('endpoints.jsonl', jsonl(derived.endpoints.map((s) => ({ ...s, firstSeen: iso(s.firstSeen), terminatingSince: s.terminatingSince === null ? null : iso(s.terminatingSince), removedAt: s.removedAt === null ? null : iso(s.removedAt) }))));
  for (const [node, tools] of input.captures ?? new Map())
    for (const [tool, c] of tools)
      put(BUNDLE_ENTRIES.capture(node, tool), `capture ${JSON.stringify(tool)} of ${JSON.stringify(node)}`, `${c.lines.map((l: string) => `${l}\n`).join('')}${c.error ? `# conntrail: ${c.error}\n` : c.ended ? '' : '# conntrail: capture still running when the bundle was made\n'}`);
  for (const [node, pcap] of input.pcaps ?? new Map()) put(BUNDLE_ENTRIES.pcap(node), `pcap of ${JSON.stringify(node)}`, pcap);
  sink.write('summary.md', summary({ ...input, timelines }, derived));
  sink.write(
    'report.html',
    renderReport({
      title: input.incident ? `conntrail incident ${input.incident.id}${input.incident.service ? ` on ${input.incident.service}` : ''}` : 'conntrail bundle',
      from: input.from,
      to: input.to,
      nodes: timelines.map((t) => t.node),
      endpoints: derived.endpoints,
      findings: derived.findings,
    }),
  );
  const manifest = {
    format: BUNDLE_FORMAT,
    conntrailVersion: input.version,
    incident: input.incident?.id ?? null,
    from: iso(input.from),
    to: iso(input.to),
    nodes: timelines.map((t) => t.node),
    ...(skipped.length > 0 ? { skipped: skipped.slice(0, 100) } : {}),
    files: Object.fromEntries(sink.written().sort(([a], [b]) => a.localeCompare(b))),
  };
  sink.write('manifest.json', `${JSON.stringify(manifest, null, 2)}\n`);
}

/** A node's snapshot files (each source's records at the start, one raw line each) and its facts file with its kernel knobs. */
function nodeFiles(t: NodeTimeline, start: readonly SourceChange[], put: (path: string | null, what: string, content: string) => void): void {
  let sysctl: readonly unknown[] | null = null;
  for (const c of start) {
    const added = c.added;
    if (c.source === 'sysctl') sysctl ??= added;
    put(BUNDLE_ENTRIES.snapshot(t.node, c.source), `snapshot of ${JSON.stringify(c.source)} on ${t.node}`, added.map((r) => `${(r as { raw: string }).raw}\n`).join(''));
  }
  put(BUNDLE_ENTRIES.node(t.node), `facts of ${t.node}`, `${JSON.stringify({ node: t.node, facts: t.facts, sysctl: Object.fromEntries((sysctl ?? []).map((r) => [(r as { name: string }).name, (r as { value: string }).value])) }, null, 2)}\n`);
}

function summary(input: BundleInput, derived: Derived): string {
  const lines: string[] = [];
  const title = input.incident ? `Incident ${input.incident.id}${input.incident.service ? ` on ${input.incident.service}` : ''}` : 'conntrail bundle';
  lines.push(`# ${title}`, '', `Window: ${iso(input.from)} to ${iso(input.to)}. Nodes: ${input.timelines.map((t) => t.node).join(', ') || 'none'}.`, '');
  const left = derived.endpoints.filter((e) => e.removedAt !== null || e.terminatingSince !== null).sort((a, b) => (a.removedAt ?? a.terminatingSince ?? 0) - (b.removedAt ?? b.terminatingSince ?? 0));
  if (left.length > 0) {
    lines.push('## Endpoint changes', '');
    for (const e of left) lines.push(`- ${e.terminatingSince !== null ? `${iso(e.terminatingSince)}: ${e.endpoint} started draining from ${e.service}. ` : ''}${e.removedAt !== null ? `${iso(e.removedAt)}: ${e.endpoint} left ${e.service}.` : ''}`);
    lines.push('');
  }
  lines.push('## What happened, in order', '');
  if (derived.findings.length === 0) lines.push('No finding in this window.', '');
  for (const f of [...derived.findings].sort((a, b) => a.time - b.time)) {
    lines.push(`### ${iso(f.time)} — ${f.severity.toUpperCase()} ${f.finding}${f.count > 1 ? ` (×${f.count})` : ''}`, '');
    lines.push(`- Node: ${f.node}`, `- Service: ${f.service ?? '-'}`, `- Tuple: ${f.tuple ? tupleText(f.tuple) : '-'}`, `- Endpoint: ${f.endpoint ?? '-'}${f.pod ? ` (pod ${f.pod})` : ''}`, '');
    lines.push(f.summary, '', 'Evidence, as the tools printed it:', '', '```');
    for (const e of f.evidence) lines.push(`[${e.time} ${e.node} ${e.source}] ${e.raw}`);
    lines.push('```', '', `What to do: ${f.advice}`, '');
  }
  lines.push('## In this bundle', '', '- `report.html`: one self-contained page: each Service\'s endpoints and the findings on one time axis.', '- `findings.jsonl`: the findings above, one JSON line each (`conntrail replay` on this bundle yields the same).', '- `timeline/<node>.jsonl`: every step the collector applied, starting with a full snapshot, with raw lines.', '- `snapshots/<node>/<source>.txt`: each source\'s records at the start of the window, one raw line each, as printed (tool headers are not kept).', '- `endpoints.jsonl`: when each Service endpoint appeared, started draining and left.',
    ...(input.kubernetes ? ['- `kubernetes.jsonl`: the Services and EndpointSlices the Kubernetes API listed at the start of the window, then every change to them (pod names, ready/serving/terminating).'] : ['- No `kubernetes.jsonl`: the collector had no Kubernetes API access, so findings name endpoints by address only.']), '- `nodes/<node>.json`: node facts and kernel knobs.', '- `capture/<node>/tcpdump.txt` (and `tcpdump.pcap`, for Wireshark), `capture/<node>/conntrack-events.txt`: what the agents recorded when the incident opened (`tcpdump -l -nn` and `conntrack -E`, filtered to its addresses and ports).', '- `manifest.json`: format, version, window, and a sha256 per file.', '');
  return lines.join('\n');
}

/** Packs files into a .tar.gz. */
export async function packBundle(files: ReadonlyMap<string, string | Buffer>, prefix: string): Promise<Buffer> {
  if (!/^conntrail-[A-Za-z0-9._-]{1,100}$/.test(prefix)) throw new Error(`bundle prefix ${JSON.stringify(prefix.slice(0, 120))} is not a bundle name`);
  for (const p of files.keys()) if (!isBundleEntry(p)) throw new Error(`${JSON.stringify(p.slice(0, 300))} is not a bundle entry name`);
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-bundle-'));
  try {
    for (const [p, text] of files) {
      const full = join(dir, prefix, p);
      mkdirSync(dirname(full), { recursive: true });
      writeFileSync(full, text);
    }
    return await tarOf(dir, prefix);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Reads a bundle from a .tar.gz or an unpacked directory. */
/** Text files as strings; pcaps (binary) in `binary`. */
export async function readBundle(path: string): Promise<{ manifest: Record<string, unknown>; files: Map<string, string>; binary: Map<string, Buffer> }> {
  let dir = path;
  let cleanup: string | null = null;
  if (!statSync(path).isDirectory()) {
    cleanup = mkdtempSync(join(tmpdir(), 'conntrail-unpack-'));
    await tar.x({ file: path, cwd: cleanup, strict: true });
    dir = cleanup;
  }
  try {
    const manifestPath = findManifest(dir);
    if (manifestPath === null) throw new Error(`${path}: no manifest.json (not a conntrail bundle)`);
    const root = dirname(manifestPath);
    const files = new Map<string, string>();
    const binary = new Map<string, Buffer>();
    const walk = (d: string) => {
      for (const name of readdirSync(d)) {
        const full = join(d, name);
        if (statSync(full).isDirectory()) walk(full);
        else if (name.endsWith('.pcap')) binary.set(relative(root, full), readFileSync(full));
        else files.set(relative(root, full), readFileSync(full, 'utf8'));
      }
    };
    walk(root);
    return { manifest: JSON.parse(files.get('manifest.json') ?? '{}') as Record<string, unknown>, files, binary };
  } finally {
    if (cleanup !== null) rmSync(cleanup, { recursive: true, force: true });
  }
}

function findManifest(dir: string): string | null {
  if (statSync(join(dir, 'manifest.json'), { throwIfNoEntry: false })?.isFile()) return join(dir, 'manifest.json');
  for (const name of readdirSync(dir)) {
    const sub = join(dir, name);
    if (statSync(sub).isDirectory() && statSync(join(sub, 'manifest.json'), { throwIfNoEntry: false })?.isFile()) return join(sub, 'manifest.json');
  }
  return null;
}

/** What the Kubernetes API said, as stored in a bundle; null when the collector had no API access. */
export function bundleKubeEvents(files: ReadonlyMap<string, string>): KubeEvent[] | null {
  const text = files.get('kubernetes.jsonl');
  return text === undefined ? null : text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as KubeEvent);
}

/** The timelines stored in a bundle. */
export function bundleTimelines(files: ReadonlyMap<string, string>): HeldTimeline[] {
  const out: HeldTimeline[] = [];
  for (const [p, text] of files) {
    const m = /^timeline\/(.+)\.jsonl$/.exec(p);
    if (m === null || m[1] === undefined) continue;
    const node = m[1];
    const nodeFile = files.get(`nodes/${node}.json`);
    const facts = nodeFile ? ((JSON.parse(nodeFile) as { facts: NodeFacts | null }).facts ?? null) : null;
    const entries = text.split('\n').filter(Boolean).map((l) => JSON.parse(l) as TimelineEntry);
    out.push({ node, facts, entries });
  }
  return out.sort((a, b) => a.node.localeCompare(b.node));
}
