// Prometheus metrics of the collector (prom-client), for the dashboards and
// alerts people already run. Only the findings are counted here as they are
// logged; every other value is read from the collector's own state when
// Prometheus scrapes, so the metrics cannot drift from what /api/nodes says.
// Label values are bounded: nodes are validated node names (and their series
// leave with the node), sources and states come from fixed sets, and Services
// past a cap fold into `service="other"`, counted and listed as a bound.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { collectDefaultMetrics, Counter, Gauge, Registry } from 'prom-client';
import { isNodeName } from '../../contract/protocol.ts';
import { isSourceName } from '../../contract/sources.ts';
import type { FindingLine } from '../detection/aggregate.ts';
import type { Incident } from '../incidents/incidents.ts';
import type { Collector } from '../receive/collector.ts';
import type { NodeView } from '../state/node-view.ts';
import type { ListenTarget } from './server.ts';

/** Distinct Services the findings counter names; findings on any further Service count under `service="other"`. */
export const MAX_SERVICES = 200;
/** A label value longer than this is cut: a Service name is node text. */
const MAX_LABEL = 256;
/**
 * An incident counts as open while a finding on its Service would still join
 * it: 5 minutes after its last finding (incidents.ts, JOIN_MS).
 */
const OPEN_MS = 5 * 60_000;
const SOURCE_STATES = ['ok', 'unavailable', 'failed'] as const;

export interface CollectorMetricsOptions {
  readonly collector: Collector;
  /** The incidents held (BundleService.incidents.list()). */
  readonly incidents?: () => readonly Incident[];
  readonly now?: () => number;
  readonly maxServices?: number;
  /** prom-client's process and Node.js metrics (default on; tests that build many registries turn them off). */
  readonly processMetrics?: boolean;
}

/** What an HTTP endpoint needs to answer a scrape. */
export interface MetricsSource {
  render(): Promise<{ readonly contentType: string; readonly body: string }>;
}

export class CollectorMetrics implements MetricsSource {
  readonly registry = new Registry();
  readonly #findings: Counter<'kind' | 'severity' | 'node' | 'service'>;
  readonly #lastSeen: Gauge<'kind' | 'severity' | 'node' | 'service'>;
  readonly #folded: Counter;
  readonly #services = new Set<string>();
  readonly #maxServices: number;
  readonly #collector: Collector;
  /** The label sets counted per node, so a node that leaves the window takes its series with it. */
  readonly #byNode = new Map<string, Map<string, { readonly labels: { kind: string; severity: string; node: string; service: string }; seen: number }>>();

  constructor(o: CollectorMetricsOptions) {
    const c = o.collector;
    const now = o.now ?? Date.now;
    const registers = [this.registry];
    this.#collector = c;
    this.#maxServices = o.maxServices ?? MAX_SERVICES;
    if (o.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    this.#findings = new Counter({
      name: 'conntrail_findings_total',
      help: 'Findings logged, by kind, severity, node and Service (a folded line counts every repeat it stands for; service="none": about no Service, "other": past the Service cap)',
      labelNames: ['kind', 'severity', 'node', 'service'],
      registers,
    });
    // What "an error finding in the last 5 minutes" is alerted on: a counter's
    // first sample is already 1, so increase() misses a label set's first finding.
    this.#lastSeen = new Gauge({
      name: 'conntrail_finding_last_seen_timestamp_seconds',
      help: 'Sample time of the latest finding of each kind, severity, node and Service (labels as conntrail_findings_total)',
      labelNames: ['kind', 'severity', 'node', 'service'],
      registers,
    });
    this.#folded = new Counter({
      name: 'conntrail_findings_services_folded_total',
      help: `Findings counted under service="other" because ${this.#maxServices} distinct Services were already named`,
      registers,
    });
    const incidents = o.incidents;
    new Gauge({
      name: 'conntrail_incidents_open',
      help: `Incidents that a finding on their Service would still join (last finding within ${OPEN_MS / 60_000} minutes)`,
      registers,
      collect() {
        const t = now();
        this.set(incidents === undefined ? 0 : incidents().filter((i) => t - i.lastFinding <= OPEN_MS).length);
      },
    });
    new Gauge({
      name: 'conntrail_node_connected',
      help: 'Whether the node has an agent connected now (1) or not (0); nodes leave once disconnected longer than the history window',
      labelNames: ['node'],
      registers,
      collect() {
        this.reset();
        for (const v of nodes(c)) this.set({ node: v.name }, v.connected ? 1 : 0);
      },
    });
    new Gauge({
      name: 'conntrail_node_lag_seconds',
      help: "How far the node's last applied sample lies behind the collector's clock",
      labelNames: ['node'],
      registers,
      collect() {
        this.reset();
        const t = now();
        for (const v of nodes(c)) if (v.lastSampleTime !== null) this.set({ node: v.name }, Math.max(0, (t - v.lastSampleTime) / 1000));
      },
    });
    new Gauge({
      name: 'conntrail_node_records',
      help: "Records the collector holds for the node's source",
      labelNames: ['node', 'source'],
      registers,
      collect() {
        this.reset();
        for (const v of nodes(c)) for (const s of v.statuses()) if (isSourceName(s.source)) this.set({ node: v.name, source: s.source }, v.recordMap(s.source).size);
      },
    });
    new Gauge({
      name: 'conntrail_source_state',
      help: "The state the node's agent last reported for a source: 1 for the current state, 0 for the others",
      labelNames: ['node', 'source', 'state'],
      registers,
      collect() {
        this.reset();
        for (const v of nodes(c))
          for (const s of v.statuses()) {
            if (!isSourceName(s.source)) continue;
            for (const state of SOURCE_STATES) this.set({ node: v.name, source: s.source, state }, s.state === state ? 1 : 0);
          }
      },
    });
    new Counter({
      name: 'conntrail_frames_rejected_total',
      help: 'Agent frames the collector did not apply, by reason',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of c.rejected) this.inc({ reason }, n);
      },
    });
    new Counter({
      name: 'conntrail_resyncs_total',
      help: "Snapshots the collector asked of the node's agent because its view of the node could not be kept whole",
      labelNames: ['node'],
      registers,
      collect() {
        this.reset();
        for (const v of nodes(c)) this.inc({ node: v.name }, v.resyncs);
      },
    });
    c.onExpired((gone) => {
      for (const node of gone) {
        for (const { labels } of this.#byNode.get(node)?.values() ?? []) {
          this.#findings.remove(labels);
          this.#lastSeen.remove(labels);
        }
        this.#byNode.delete(node);
      }
    });
  }

  /** Counts one logged finding line (pipeline onFinding). */
  finding(line: FindingLine): void {
    if (!isNodeName(line.node)) return;
    const labels = { kind: line.finding, severity: line.severity, node: line.node, service: this.#service(line.service) };
    this.#findings.inc(labels, line.count);
    const seen = Math.max(line.time, Date.parse(line.lastSeen) || 0) / 1000;
    const key = `${labels.kind}\u0000${labels.severity}\u0000${labels.service}`;
    let counted = this.#byNode.get(line.node);
    if (counted === undefined) this.#byNode.set(line.node, (counted = new Map()));
    // A folded line is logged when its window closes, maybe after a newer line of another endpoint's fold: the latest time stays.
    const held = counted.get(key);
    if (held === undefined) counted.set(key, { labels, seen });
    else held.seen = Math.max(held.seen, seen);
    this.#lastSeen.set(labels, held?.seen ?? seen);
    if (labels.service === 'other' && line.service !== null) this.#folded.inc(line.count);
  }

  #service(service: string | null): string {
    if (service === null) return 'none';
    const name = service.length > MAX_LABEL ? `${service.slice(0, MAX_LABEL)}…` : service;
    if (this.#services.has(name)) return name;
    if (this.#services.size < this.#maxServices) {
      this.#services.add(name);
      return name;
    }
    this.#collector.bounds.hit('metrics.services', 'collector', this.#maxServices, 'findings on further Services are counted under service="other" in conntrail_findings_total');
    return 'other';
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

/** Nodes whose names may label a series: every view is named by a validated hello, checked again here. */
function nodes(c: Collector): NodeView[] {
  return [...c.nodes.values()].filter((v) => isNodeName(v.name));
}

/** Answers a scrape; a failure to render is a 500 with nothing else (never a half-written exposition). */
export function serveMetrics(res: ServerResponse, metrics: MetricsSource): void {
  metrics.render().then(
    ({ contentType, body }) => {
      res.writeHead(200, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    },
    (err: unknown) => {
      const text = JSON.stringify({ error: `metrics: ${err instanceof Error ? err.message : String(err)}` });
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    },
  );
}

/**
 * `--metrics-listen`: a plain HTTP listener serving only GET /metrics, with no
 * token, for in-cluster scraping; the API and agent sockets stay on --listen.
 */
export async function startMetricsListener(metrics: MetricsSource, target: ListenTarget): Promise<{ address: AddressInfo | string; close(): Promise<void> }> {
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found: this listener serves /metrics only"}');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { 'content-type': 'application/json' }).end('{"error":"method not allowed"}');
      return;
    }
    serveMetrics(res, metrics);
  });
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    const done = () => {
      server.off('error', reject);
      resolve();
    };
    if (target.path !== undefined) server.listen(target.path, done);
    else server.listen(target.port ?? 0, target.host ?? '0.0.0.0', done);
  });
  return {
    address: server.address() ?? '',
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
