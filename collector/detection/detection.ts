// The detection stage: for every applied step of every node, one update of
// what this stage derives (the Services kube-proxy programmed, each
// endpoint's history, pending SYNs, step times), then every detector as a
// pure function of the read-only node index, then folding into log lines for
// a sink (the collector's log, `replay`'s stdout, a bundle, a test's array).
import type { SourceName } from '../../contract/sources.ts';
import { FindingAggregator, type FindingLine } from './aggregate.ts';
import { detectConntrackPressure } from './detectors/conntrack-pressure.ts';
import type { Detector, NodeIndex } from './detectors/input.ts';
import { detectLbHairpin } from './detectors/lb-hairpin.ts';
import { detectLbHealthcheckDropped } from './detectors/lb-healthcheck-dropped.ts';
import { detectPortReuse } from './detectors/port-reuse.ts';
import { detectStaleNat } from './detectors/stale-nat.ts';
import { detectUnansweredSyn } from './detectors/unanswered-syn.ts';
import type { Finding } from './findings.ts';
import { EndpointHistory } from './endpoint-history.ts';
import type { KubeView } from '../kube/catalog.ts';
import { withKubernetes } from '../kube/enrich.ts';
import type { NodeView, Transition } from '../state/node-view.ts';
import { MAX_PENDING_SYNS, PendingSyns } from './pending-syns.ts';
import { programmedServices, type ApiServices, type ProgrammedService } from './services.ts';
import type { Bounds } from '../state/bounds.ts';

/** Specific detectors; `unanswered-syn` runs after them, for what they leave unexplained. */
export const detectors: readonly Detector[] = [detectPortReuse, detectStaleNat, detectLbHairpin, detectLbHealthcheckDropped, detectConntrackPressure];
/** How long a specific finding explains later symptoms on the same client. */
const EXPLAINS_MS = 5 * 60_000;
/** Step times kept per node: enough for any grace period a detector counts in samples. */
const STEP_TIMES = 64;

/** Sources whose records say what kube-proxy programmed. */
const PROGRAM_SOURCES = new Set<SourceName>(['iptables', 'nft', 'ipvs', 'ipset', 'addrs']);

/** What the detection stage keeps for one node between steps. */
class NodeDerived {
  readonly history = new EndpointHistory();
  readonly pending = new PendingSyns();
  readonly stepTimes: number[] = [];
  prevTime: number | null = null;
  firstTime: number | null = null;
  kubeRevision = -1;
  built = false;
}

export interface DetectionOptions {
  /** Folding window for repeats (default one minute). */
  readonly windowMs?: number;
  /** What the Kubernetes API said, when there is one (names pods, reads Service specs). */
  readonly kube?: KubeView | null;
  /** Where the detection stage's own bounds (pending SYNs per node) are logged and listed. */
  readonly bounds?: Bounds | null;
}

export class Detection {
  readonly #nodes = new Map<string, NodeDerived>();
  readonly #aggregator: FindingAggregator;
  readonly #sink: (line: FindingLine) => void;
  /** Client address:port of tuples a specific finding explained, with when. */
  readonly #explained = new Map<string, number>();
  readonly #kube: KubeView | null;
  readonly #bounds: Bounds | null;

  constructor(sink: (line: FindingLine) => void, options: DetectionOptions = {}) {
    this.#sink = sink;
    this.#bounds = options.bounds ?? null;
    this.#aggregator = new FindingAggregator(options.windowMs);
    this.#kube = options.kube ?? null;
  }

  /** Drops what detection derived for nodes the collector no longer holds. */
  forget(nodes: readonly string[]): void {
    for (const n of nodes) this.#nodes.delete(n);
  }

  #derived(node: string): NodeDerived {
    let d = this.#nodes.get(node);
    if (d === undefined) this.#nodes.set(node, (d = new NodeDerived()));
    return d;
  }

  history(node: string): EndpointHistory {
    return this.#derived(node).history;
  }

  /** The Services last read back from this node's rules. */
  services(node: string): readonly ProgrammedService[] {
    return this.#nodes.get(node)?.history.services ?? [];
  }

  onStep(view: NodeView, time: number, transitions: readonly Transition[], snapshot = false): void {
    const d = this.#derived(view.name);
    this.#update(d, view, time, transitions);
    const index = indexOf(view, d, time, transitions, snapshot, this.#kube);
    const found: Finding[] = detectors.flatMap((detect) => detect(index));
    for (const f of found) if (f.tuple) this.#explained.set(clientOf(f), time);
    for (const f of detectUnansweredSyn(index)) {
      const at = this.#explained.get(clientOf(f));
      if (at === undefined || time - at > EXPLAINS_MS) found.push(f);
    }
    for (const [k, at] of this.#explained) if (time - at > EXPLAINS_MS) this.#explained.delete(k);
    d.prevTime = time;
    const kube = this.#kube;
    const named = kube === null ? found : found.map((f) => withKubernetes(f, kube));
    for (const f of named) for (const line of this.#aggregator.add(f)) this.#sink(line);
    for (const line of this.#aggregator.flush(time)) this.#sink(line);
  }

  /** The one update step: everything derived from this step, before any detector reads it. */
  #update(d: NodeDerived, view: NodeView, time: number, transitions: readonly Transition[]): void {
    // Counters moving (`refreshed`) are not a change of what is programmed: the model is rebuilt only when rules change.
    const programChanged = transitions.some((t) => PROGRAM_SOURCES.has(t.source) && t.kind !== 'refreshed');
    const kubeRevision = this.#kube?.revision() ?? -1;
    if (!d.built || programChanged || kubeRevision !== d.kubeRevision) {
      d.history.update(time, programmedServices(
        {
          iptables: [...view.recordMap('iptables').values()],
          nft: [...view.recordMap('nft').values()],
          ipvs: [...view.recordMap('ipvs').values()],
          ipset: [...view.recordMap('ipset').values()].flatMap((r) => (r.kind === 'member' ? [r] : [])),
          addrs: [...view.recordMap('addrs').values()],
        },
        apiAt(this.#kube, time),
      ));
      d.built = true;
      d.kubeRevision = kubeRevision;
    }
    const refused = d.pending.update(time, transitions);
    if (refused > 0) this.#bounds?.hit('pending-syns', view.name, MAX_PENDING_SYNS, `${refused} more unanswered SYNs were not tracked: no unanswered-syn finding for them`);
    d.firstTime ??= time;
    d.stepTimes.push(time);
    if (d.stepTimes.length > STEP_TIMES) d.stepTimes.shift();
  }

  /** Runs on every step the collector applies. */
  watch(collector: { onTimeline(l: (view: NodeView, entry: { time: number; kind: 'snapshot' | 'diff' }, transitions: readonly Transition[]) => void): void }): void {
    collector.onTimeline((view, entry, transitions) => this.onStep(view, entry.time, transitions, entry.kind === 'snapshot'));
  }

  /** Logs what repeats are still being counted (at shutdown, or at the end of a replay). */
  flush(now: number): void {
    for (const line of this.#aggregator.flush(now, true)) this.#sink(line);
  }
}

function apiAt(kube: KubeView | null, time: number): ApiServices | null {
  if (kube === null) return null;
  return { serviceForAddress: (address, port, protocol) => kube.serviceForAddress(address, port, protocol, time) };
}

function indexOf(view: NodeView, d: NodeDerived, time: number, transitions: readonly Transition[], snapshot: boolean, kube: KubeView | null): NodeIndex {
  const stepTimes = d.stepTimes;
  return {
    node: view.name,
    time,
    prevTime: d.prevTime,
    snapshot,
    transitions,
    records: (source) => view.recordMap(source),
    readAt: (source, key) => view.readAt(source, key),
    watchedSince: d.firstTime ?? time,
    // Past the kept window every step counts: a grace counted in samples is long over.
    stepsSince: (t) => (stepTimes.length === STEP_TIMES && (stepTimes[0] ?? 0) > t ? Number.MAX_SAFE_INTEGER : stepTimes.filter((s) => s > t).length),
    endpoints: d.history,
    pendingSyns: (after, upTo) => d.pending.between(after, upTo),
    kube,
    kernel: view.facts?.kernel ?? view.recordMap('sysctl').get('kernel.osrelease')?.value ?? null,
  };
}

const clientOf = (f: Finding): string => (f.tuple ? `${f.node} ${f.tuple.proto} ${f.tuple.src}:${f.tuple.sport ?? '-'}` : '');
