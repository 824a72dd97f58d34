// What the HTTP API serves about incidents: the list, one incident, and its
// bundle (or an ad hoc one for the last N minutes), built from the
// collector's histories on request.
import type { Collector } from './collector.ts';
import { bundleFiles, packBundle, type NodeTimeline } from './bundle.ts';
import { describeIncident, incidentWindow, Incidents, type Incident } from './incidents.ts';

export class BundleService {
  readonly incidents = new Incidents();
  readonly #collector: Collector;
  readonly #version: string;

  constructor(collector: Collector, version: string) {
    this.#collector = collector;
    this.#version = version;
  }

  list(): Record<string, unknown>[] {
    return this.incidents.list().map(describeIncident);
  }

  describe(id: string): Record<string, unknown> | undefined {
    const i = this.incidents.get(id);
    return i === undefined ? undefined : { ...describeIncident(i), findingLines: i.findings };
  }

  timelines(from: number, to: number, nodes: readonly string[] | null): NodeTimeline[] {
    const out: NodeTimeline[] = [];
    for (const view of this.#collector.nodes.values()) {
      if (nodes !== null && !nodes.includes(view.name)) continue;
      const entries = this.#collector.history(view.name)?.slice(from, to) ?? [];
      if (entries.length > 0) out.push({ node: view.name, facts: view.facts, entries });
    }
    return out;
  }

  async incidentBundle(id: string): Promise<Buffer | null> {
    const incident = this.incidents.get(id);
    if (incident === undefined) return null;
    const { from, to } = incidentWindow(incident);
    return this.#pack(from, to, incident, [...incident.nodes]);
  }

  async recentBundle(sinceMs: number, now: number): Promise<Buffer> {
    return this.#pack(now - sinceMs, now, null, null);
  }

  async #pack(from: number, to: number, incident: Incident | null, nodes: readonly string[] | null): Promise<Buffer> {
    const files = bundleFiles({ from, to, timelines: this.timelines(from, to, nodes), incident, version: this.#version });
    return packBundle(files, `conntrail-${incident?.id ?? new Date(to).toISOString().replace(/[-:.]/g, '')}`);
  }
}

/** `10m`, `90s`, `2h` → milliseconds. */
export function parseSince(text: string): number | null {
  const m = /^(\d+)(s|m|h)$/.exec(text);
  if (m === null) return null;
  return Number(m[1]) * (m[2] === 's' ? 1_000 : m[2] === 'm' ? 60_000 : 3_600_000);
}
