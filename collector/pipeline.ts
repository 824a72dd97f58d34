// The one pipeline: decoded agent messages in, node views and timelines,
// detection, incidents and bundles out. The collector process, `local`,
// `replay`, `doctor` and bundles (which replay their own timeline) all build
// it here, so a finding means the same thing wherever it was made.
import type { Logger } from 'pino';
import type { FindingLine } from './detection/aggregate.ts';
import { BundleService } from './incidents/bundle-service.ts';
import { Collector } from './receive/collector.ts';
import { MemoryBudget } from './state/memory.ts';
import { Detection } from './detection/detection.ts';
import type { Incident } from './incidents/incidents.ts';
import type { KubeCatalog, KubeView } from './kube/catalog.ts';
import { describeServices } from './detection/services.ts';
import type { Loaded, Store } from './store/store.ts';
import type { HistoryStore } from './state/history.ts';

export interface PipelineOptions {
  readonly log: Logger;
  readonly now?: () => number;
  /** How much timeline each node keeps. */
  readonly historyMs?: number;
  /** RSS past which history is shed before live state; null or absent: no budget (replay, tests). */
  readonly memoryBudget?: number | null;
  /** What the Kubernetes API says; a KubeCatalog also lets bundles carry it. */
  readonly kube?: KubeView | null;
  readonly catalog?: KubeCatalog | null;
  readonly version?: string;
  /** Every folded finding line, in the order it is logged. */
  readonly onFinding?: (line: FindingLine) => void;
  /** An error finding opened an incident; `capturing` lists the nodes asked for a capture. */
  readonly onIncident?: (incident: Incident, line: FindingLine, capturing: readonly string[]) => void;
  /** Capture length asked of the incident's nodes when an incident opens; 0 asks nothing. */
  readonly captureMs?: number;
  readonly windowMs?: number;
  /**
   * The durable store (`--data-dir`) and what it held at start: every applied
   * step, finding line and incident is written to it, and the nodes and
   * incidents it held are reloaded before any agent connects.
   */
  readonly store?: { readonly store: Store; readonly loaded: Loaded } | null;
  /** Where history past its last seconds goes without a store (a bundle's replay: nowhere); absent: the heap. */
  readonly historyStore?: HistoryStore | null;
}

export interface Pipeline {
  readonly collector: Collector;
  readonly detection: Detection;
  readonly bundles: BundleService;
  readonly store: Store | null;
  /** The programmed Services of a node, as `GET /api/nodes/:node/services` serves them. */
  services(node: string): readonly object[];
  /** Logs the repeats still being folded (at shutdown, or at the end of a replay). */
  flush(now: number): void;
}

export function createPipeline(o: PipelineOptions): Pipeline {
  const memory = o.memoryBudget == null ? null : new MemoryBudget(o.memoryBudget, o.historyMs ?? 15 * 60_000);
  const store = o.store?.store ?? null;
  // With a store, history past its last seconds is read back from it rather than held in the heap.
  const collector = new Collector({ log: o.log, memory, historyStore: store ?? o.historyStore ?? null, ...(o.historyMs === undefined ? {} : { historyMs: o.historyMs }), ...(o.now === undefined ? {} : { now: o.now }) });
  const bundles = new BundleService(collector, o.log, { version: o.version ?? 'dev', kube: o.catalog ?? null, ...(o.historyMs === undefined ? {} : { windowMs: o.historyMs }), ...(o.now === undefined ? {} : { now: o.now }) });
  const captureMs = o.captureMs ?? 0;
  // The store's listener comes first: a step is queued for writing by the same call that applied it, before detection reads it.
  if (store !== null)
    collector.onTimeline((view, entry) => {
      if (!collector.restoring) store.step(view.name, entry);
    });
  const detection = new Detection(
    (line) => {
      // Replaying stored steps at start rebuilds what detection derives; its findings were logged (and stored) the first time.
      if (collector.restoring) return;
      o.onFinding?.(line);
      const opened = bundles.incidents.add(line);
      if (store !== null) {
        const incident = opened ?? joinedBy(bundles.incidents.list(), line);
        store.finding(line, incident?.id ?? null);
        if (incident !== undefined) store.incident(incident);
      }
      if (opened === null) return;
      const capturing = captureMs > 0 ? bundles.startCapture(opened, captureMs) : [];
      o.onIncident?.(opened, line, capturing);
    },
    { kube: o.kube ?? o.catalog ?? null, bounds: collector.bounds, ...(o.windowMs === undefined ? {} : { windowMs: o.windowMs }) },
  );
  detection.watch(collector);
  // Each sweep (and each expiry at the node cap) also prunes what the other stages keep per node and per window.
  collector.onExpired((nodes) => {
    detection.forget(nodes);
    const now = (o.now ?? Date.now)();
    bundles.incidents.prune(now);
    bundles.captures.prune(now);
  });
  if (store !== null && o.store) reload(o, collector, detection, bundles, store, o.store.loaded);
  return {
    collector,
    detection,
    bundles,
    store,
    services: (node) => describeServices(detection.services(node)),
    flush: (now) => detection.flush(now),
  };
}

/** The incident a finding line just joined (the newest on its Service that took it, or whose window it extended). */
function joinedBy(incidents: readonly Incident[], line: FindingLine): Incident | undefined {
  for (let i = incidents.length - 1; i >= 0; i--) {
    const incident = incidents[i];
    if (incident === undefined || incident.service !== line.service) continue;
    if (incident.findings.at(-1) === line || incident.lastFinding >= line.time) return incident;
  }
  return undefined;
}

/**
 * Puts back what the store held: each node's view and history (its stored
 * steps applied as they were live, so detection rebuilds the endpoints'
 * history it reads), then the incidents. Then commits on a timer, tells
 * agents what is durable, and deletes what leaves the window.
 */
function reload(o: PipelineOptions, collector: Collector, detection: Detection, bundles: BundleService, store: Store, loaded: Loaded): void {
  const now = o.now ?? Date.now;
  store.nodeMeta((node) => {
    const v = collector.nodes.get(node);
    if (v === undefined) return null;
    return { run: collector.runOf(node), lastSeq: v.lastSeq, lastTime: v.lastSampleTime, connectedAt: v.connectedAt, lastReceivedAt: v.lastReceivedAt, agentVersion: v.agentVersion, intervalMs: v.intervalMs, facts: v.facts, statuses: v.statuses() };
  });
  store.stateSource((node) => {
    const v = collector.nodes.get(node);
    if (v === undefined || v.awaitingSnapshot || v.lastSeq === null || v.lastSampleTime === null) return null;
    return { seq: v.lastSeq, time: v.lastSampleTime, kind: 'snapshot', changes: v.sources().map((source) => ({ source, added: v.records(source), removed: [], changed: [], refreshed: [] })) };
  });
  // A temporary store outlives nothing: telling an agent its steps are durable there would be untrue.
  if (!store.temporary) store.onDurable((node, run, seq, time) => collector.acknowledge(node, run, seq, time));
  collector.onExpired((nodes) => store.forget(nodes));
  let steps = 0;
  collector.quietly(() => {
    for (const saved of loaded.nodes) {
      const r = collector.restore(saved);
      steps += r.applied;
      if (r.problem !== null) o.log.warn({ node: saved.node, applied: r.applied, problem: r.problem }, 'a stored timeline stopped applying part way: kept what applied; the agent is asked for a snapshot when it connects');
    }
    // Repeats still being folded belong to before the restart.
    detection.flush(now());
  });
  bundles.incidents.restore(loaded.incidents, loaded.opened);
  if (!store.temporary)
    o.log.info(
    { path: store.path, nodes: loaded.nodes.map((n) => n.node).slice(0, 20), nodeCount: loaded.nodes.length, steps, incidents: loaded.incidents.length, findings: loaded.findings, ...(Object.keys(loaded.unreadable).length > 0 ? { unreadable: loaded.unreadable } : {}) },
    'reloaded from the data store',
  );
  store.start(() => bundles.incidents.list().map((i) => i.id), now);
}
