// What the HTTP API serves about incidents: the list, one incident, and its
// bundle (or an ad hoc one for the last N minutes), built from the
// collector's histories on request.
import { parseDuration } from '../../contract/duration.ts';
import type { Logger } from 'pino';
import type { Collector } from '../receive/collector.ts';
import { Captures } from './captures.ts';
import { packBundleStreaming, type HeldTimeline, type NodeTimeline, type PackedBundle } from './bundle.ts';
import { describeIncident, incidentWindow, Incidents, type Incident } from './incidents.ts';
import type { KubeCatalog, KubeEvent } from '../kube/catalog.ts';

export interface BundleServiceOptions {
  readonly version: string;
  readonly kube?: KubeCatalog | null;
  /** How long incidents and captures are kept: the history window. */
  readonly windowMs?: number;
  readonly now?: () => number;
}

/**
 * Bundles are built one at a time: each replays every node's window and
 * holds a node's state while it does, and two at once at 200 nodes would
 * double that. A few requests wait their turn; more are refused (BundleBusy).
 */
export const MAX_BUNDLES_WAITING = 2;

/** Too many bundles asked for at once: the API answers 503 with Retry-After. */
export class BundleBusy extends Error {
  constructor() {
    super(`a bundle is being built and ${MAX_BUNDLES_WAITING} more are waiting: try again when they are done`);
  }
}

export class BundleService {
  readonly incidents: Incidents;
  readonly captures: Captures;
  readonly #collector: Collector;
  readonly #version: string;
  readonly #kube: KubeCatalog | null;
  readonly #now: () => number;
  readonly #log: Logger;
  /** Resolves when the bundle being built (and those queued before) are done. */
  #turn: Promise<unknown> = Promise.resolve();
  #waiting = 0;

  constructor(collector: Collector, log: Logger, options: BundleServiceOptions) {
    this.#collector = collector;
    this.#log = log;
    this.#version = options.version;
    this.#kube = options.kube ?? null;
    this.#now = options.now ?? Date.now;
    const windowMs = options.windowMs ?? 15 * 60_000;
    this.incidents = new Incidents(windowMs, collector.bounds);
    this.captures = new Captures(windowMs, collector.bounds);
    collector.onCapture((node, msg) => {
      const outcome = this.captures.take(node, msg);
      if (!outcome.kept) this.#log.warn({ node, id: msg.id }, `ignored ${outcome.reason}`);
      else if (outcome.note !== null) this.#log.info({ node, id: msg.id, ...(msg.type === 'capture-pcap' ? {} : { tool: msg.tool }) }, `capture ${outcome.note}`);
    });
  }

  /** The API's state at `from`, then every change up to `to`; null without API access. */
  kubeEvents(from: number, to: number): KubeEvent[] | null {
    if (this.#kube === null) return null;
    return [...this.#kube.stateAt(from), ...this.#kube.events(from, to).filter((e) => e.time > from)];
  }

  list(): Record<string, unknown>[] {
    return this.incidents.list().map(describeIncident);
  }

  describe(id: string): Record<string, unknown> | undefined {
    const i = this.incidents.get(id);
    return i === undefined ? undefined : { ...describeIncident(i), findingLines: i.findings };
  }

  /** Each node's slice, whole (tests and small callers; bundles stream theirs). */
  timelines(from: number, to: number, nodes: readonly string[] | null): HeldTimeline[] {
    const out: HeldTimeline[] = [];
    for (const view of this.#collector.nodes.values()) {
      if (nodes !== null && !nodes.includes(view.name)) continue;
      const entries = this.#collector.history(view.name)?.slice(from, to) ?? [];
      if (entries.length > 0) out.push({ node: view.name, facts: view.facts, entries });
    }
    return out;
  }

  /** Asks the agents on the incident's nodes to capture its traffic for `durationMs`. Returns the nodes asked. */
  startCapture(incident: Incident, durationMs: number): string[] {
    const hosts = new Set<string>();
    const ports = new Set<number>();
    for (const f of incident.findings) {
      if (f.tuple) {
        hosts.add(f.tuple.src);
        if (f.tuple.dst !== '-') hosts.add(f.tuple.dst);
        if (f.tuple.sport !== null) ports.add(f.tuple.sport);
        if (f.tuple.dport !== null) ports.add(f.tuple.dport);
      }
      const ep = f.endpoint === null ? null : /^\[?([^\]]+?)\]?:(\d+)$/.exec(f.endpoint);
      if (ep?.[1] && ep[2]) {
        hosts.add(ep[1]);
        ports.add(Number(ep[2]));
      }
    }
    this.captures.open(incident.id, this.#now());
    const req = { v: 1, type: 'capture', id: incident.id, durationMs, hosts: [...hosts].slice(0, 16), ports: [...ports].slice(0, 16) } as const;
    return [...incident.nodes].filter((node) => this.#collector.requestCapture(node, req));
  }

  async incidentBundle(id: string): Promise<PackedBundle | null> {
    const incident = this.incidents.get(id);
    if (incident === undefined) return null;
    const { from, to } = incidentWindow(incident);
    return this.#pack(from, to, incident, [...incident.nodes]);
  }

  async recentBundle(sinceMs: number, now: number): Promise<PackedBundle> {
    return this.#pack(now - sinceMs, now, null, null);
  }

  /**
   * The nodes' timelines for a bundle, each read from its history when the
   * bundle gets to it (from the store, a page at a time, with a store), and
   * read again for the timeline file: no node's slice is held whole, and
   * never all nodes' at once.
   */
  #timelineSources(from: number, to: number, nodes: readonly string[] | null): NodeTimeline[] {
    const out: NodeTimeline[] = [];
    for (const view of [...this.#collector.nodes.values()]) {
      if (nodes !== null && !nodes.includes(view.name)) continue;
      const history = this.#collector.history(view.name);
      if (history === undefined) continue;
      // A node with nothing in the window has no timeline, as before: the first step tells.
      if (history.isEmpty()) continue;
      out.push({ node: view.name, facts: view.facts, entries: { [Symbol.iterator]: () => history.stream(from, to) } });
    }
    return out;
  }

  async #pack(from: number, to: number, incident: Incident | null, nodes: readonly string[] | null): Promise<PackedBundle> {
    if (this.#waiting > MAX_BUNDLES_WAITING) {
      this.#collector.bounds.hit('bundles.waiting', 'collector', MAX_BUNDLES_WAITING, 'a bundle request was refused (503) while others were being built');
      throw new BundleBusy();
    }
    this.#waiting++;
    const before = this.#turn;
    let done = (): void => {};
    this.#turn = new Promise<void>((resolve) => (done = resolve));
    try {
      await before.catch(() => {});
      return await this.#packNow(from, to, incident, nodes);
    } finally {
      this.#waiting--;
      done();
    }
  }

  #packNow(from: number, to: number, incident: Incident | null, nodes: readonly string[] | null): Promise<PackedBundle> {
    const { lines: captures, pcaps } = incident === null ? { lines: new Map(), pcaps: new Map() } : this.captures.of(incident.id);
    const timelines = this.#timelineSources(from, to, nodes);
    return packBundleStreaming({ from, to, timelines, incident, version: this.#version, captures, pcaps, kubernetes: this.kubeEvents(from, to) }, `conntrail-${incident?.id ?? new Date(to).toISOString().replace(/[-:.]/g, '')}`);
  }
}

/** `?since=` and `--history`: the shared duration syntax. */
export const parseSince = parseDuration;
