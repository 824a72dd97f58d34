// Runs every detector on every applied step of every node, keeps each node's
// endpoint history current, and hands folded finding lines to a sink (the
// collector's log, `replay`'s stdout, a test's array).
import type { RecordOf, SourceName } from '../contract/sources.ts';
import { FindingAggregator, type FindingLine } from './aggregate.ts';
import { detectConntrackPressure } from './detectors/conntrack-pressure.ts';
import type { Detector, DetectorInput } from './detectors/input.ts';
import { detectLbHairpin } from './detectors/lb-hairpin.ts';
import { detectLbHealthcheckDropped } from './detectors/lb-healthcheck-dropped.ts';
import { detectPortReuse } from './detectors/port-reuse.ts';
import { detectStaleNat } from './detectors/stale-nat.ts';
import { detectUnansweredSyn } from './detectors/unanswered-syn.ts';
import type { Finding } from './findings.ts';
import { EndpointHistory } from './endpoint-history.ts';
import type { KubeView } from './kube/catalog.ts';
import { withKubernetes } from './kube/enrich.ts';
import type { Collector } from './collector.ts';
import type { NodeView, Transition } from './node-view.ts';
import { PendingSyns } from './pending-syns.ts';
import { RecentActivity } from './recent-activity.ts';
import { programmedServices } from './services.ts';

/** Specific detectors; `unanswered-syn` runs after them, for what they leave unexplained. */
export const detectors: readonly Detector[] = [detectPortReuse, detectStaleNat, detectLbHairpin, detectLbHealthcheckDropped, detectConntrackPressure];
/** How long a specific finding explains later symptoms on the same client. */
const EXPLAINS_MS = 5 * 60_000;

const RULE_SOURCES = new Set<SourceName>(['iptables', 'nft', 'ipvs']);

export class Detection {
  readonly #histories = new Map<string, EndpointHistory>();
  readonly #pendingSyns = new Map<string, PendingSyns>();
  readonly #activity = new Map<string, RecentActivity>();
  readonly #prevTime = new Map<string, number>();
  readonly #aggregator: FindingAggregator;
  readonly #sink: (line: FindingLine) => void;
  /** Client address:port of tuples a specific finding explained, with when. */
  readonly #explained = new Map<string, number>();

  readonly #kube: KubeView | null;

  /** `kube`: what the Kubernetes API said, when there is one (names pods, reads Service specs). */
  constructor(sink: (line: FindingLine) => void, options: { windowMs?: number; kube?: KubeView | null } = {}) {
    this.#sink = sink;
    this.#aggregator = new FindingAggregator(options.windowMs);
    this.#kube = options.kube ?? null;
  }

  history(node: string): EndpointHistory {
    let h = this.#histories.get(node);
    if (h === undefined) {
      h = new EndpointHistory();
      this.#histories.set(node, h);
    }
    return h;
  }

  onStep(view: NodeView, time: number, transitions: readonly Transition[], snapshot = false): void {
    const history = this.history(view.name);
    if (transitions.some((t) => RULE_SOURCES.has(t.source)) || history.services.length === 0) {
      history.update(
        time,
        programmedServices({
          iptables: [...view.recordMap('iptables').values()] as RecordOf<'iptables'>[],
          nft: [...view.recordMap('nft').values()] as RecordOf<'nft'>[],
          ipvs: [...view.recordMap('ipvs').values()] as RecordOf<'ipvs'>[],
        }),
      );
    }
    let pending = this.#pendingSyns.get(view.name);
    if (pending === undefined) {
      pending = new PendingSyns();
      this.#pendingSyns.set(view.name, pending);
    }
    pending.update(time, transitions);
    let activity = this.#activity.get(view.name);
    if (activity === undefined) {
      activity = new RecentActivity();
      this.#activity.set(view.name, activity);
    }
    const input: DetectorInput = {
      node: view.name,
      time,
      prevTime: this.#prevTime.get(view.name) ?? null,
      transitions,
      records: <N extends SourceName>(source: N) => view.recordMap(source) as ReadonlyMap<string, RecordOf<N>>,
      endpoints: history,
      pendingSyns: pending,
      recentActivity: activity,
      kube: this.#kube,
      kernel: view.facts?.kernel ?? (view.recordMap('sysctl').get('kernel.osrelease') as RecordOf<'sysctl'> | undefined)?.value ?? null,
    };
    this.#prevTime.set(view.name, time);
    const found: Finding[] = detectors.flatMap((detect) => detect(input));
    // After detection: an entry is judged against activity before this step, and its own move this step.
    activity.update(time, transitions, snapshot);
    for (const f of found) if (f.tuple) this.#explained.set(clientOf(f), time);
    for (const f of detectUnansweredSyn(input)) {
      const at = this.#explained.get(clientOf(f));
      if (at === undefined || time - at > EXPLAINS_MS) found.push(f);
    }
    const kube = this.#kube;
    const named = kube === null ? found : found.map((f) => withKubernetes(f, kube));
    for (const f of named) for (const line of this.#aggregator.add(f)) this.#sink(line);
    for (const line of this.#aggregator.flush(time)) this.#sink(line);
  }

  /** Runs on every step the collector applies. */
  watch(collector: Collector): void {
    collector.onTimeline((view, entry, transitions) => this.onStep(view, entry.time, transitions, entry.kind === 'snapshot'));
  }

  /** Logs what repeats are still being counted (at shutdown, or at the end of a replay). */
  flush(now: number): void {
    for (const line of this.#aggregator.flush(now, true)) this.#sink(line);
  }
}

const clientOf = (f: Finding): string => (f.tuple ? `${f.node} ${f.tuple.proto} ${f.tuple.src}:${f.tuple.sport ?? '-'}` : '');
