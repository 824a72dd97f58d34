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
}

export interface Pipeline {
  readonly collector: Collector;
  readonly detection: Detection;
  readonly bundles: BundleService;
  /** The programmed Services of a node, as `GET /api/nodes/:node/services` serves them. */
  services(node: string): readonly object[];
  /** Logs the repeats still being folded (at shutdown, or at the end of a replay). */
  flush(now: number): void;
}

export function createPipeline(o: PipelineOptions): Pipeline {
  const memory = o.memoryBudget == null ? null : new MemoryBudget(o.memoryBudget, o.historyMs ?? 15 * 60_000);
  const collector = new Collector({ log: o.log, memory, ...(o.historyMs === undefined ? {} : { historyMs: o.historyMs }), ...(o.now === undefined ? {} : { now: o.now }) });
  const bundles = new BundleService(collector, o.log, { version: o.version ?? 'dev', kube: o.catalog ?? null, ...(o.historyMs === undefined ? {} : { windowMs: o.historyMs }), ...(o.now === undefined ? {} : { now: o.now }) });
  const captureMs = o.captureMs ?? 0;
  const detection = new Detection(
    (line) => {
      o.onFinding?.(line);
      const opened = bundles.incidents.add(line);
      if (opened === null) return;
      const capturing = captureMs > 0 ? bundles.startCapture(opened, captureMs) : [];
      o.onIncident?.(opened, line, capturing);
    },
    { kube: o.kube ?? o.catalog ?? null, ...(o.windowMs === undefined ? {} : { windowMs: o.windowMs }) },
  );
  detection.watch(collector);
  // Each sweep (and each expiry at the node cap) also prunes what the other stages keep per node and per window.
  collector.onExpired((nodes) => {
    detection.forget(nodes);
    const now = (o.now ?? Date.now)();
    bundles.incidents.prune(now);
    bundles.captures.prune(now);
  });
  return {
    collector,
    detection,
    bundles,
    services: (node) => describeServices(detection.services(node)),
    flush: (now) => detection.flush(now),
  };
}
