// An error finding opens an incident; later findings on the same Service
// join it while it is open. An incident covers the window from 2 minutes
// before its first finding to 1 minute after its last: what a bundle holds.
import type { FindingLine } from './aggregate.ts';

export const BEFORE_MS = 2 * 60_000;
export const AFTER_MS = 60_000;
/** Findings this close to an incident's last one join it. */
const JOIN_MS = 5 * 60_000;

export interface Incident {
  readonly id: string;
  readonly service: string | null;
  readonly nodes: Set<string>;
  readonly findings: FindingLine[];
  readonly firstFinding: number;
  lastFinding: number;
}

export const incidentWindow = (i: Incident): { from: number; to: number } => ({ from: i.firstFinding - BEFORE_MS, to: i.lastFinding + AFTER_MS });

export class Incidents {
  readonly #all: Incident[] = [];

  /** Returns the incident a finding opened, or null when it joined one (or opened none). */
  add(line: FindingLine): Incident | null {
    const open = this.#all.find((i) => i.service === line.service && line.time - i.lastFinding <= JOIN_MS);
    if (open !== undefined) {
      open.findings.push(line);
      open.nodes.add(line.node);
      open.lastFinding = Math.max(open.lastFinding, line.time);
      return null;
    }
    if (line.severity !== 'error') return null;
    const stamp = new Date(line.time).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    const incident: Incident = { id: `${stamp}-${this.#all.length + 1}`, service: line.service, nodes: new Set([line.node]), findings: [line], firstFinding: line.time, lastFinding: line.time };
    this.#all.push(incident);
    return incident;
  }

  list(): readonly Incident[] {
    return this.#all;
  }

  get(id: string): Incident | undefined {
    return this.#all.find((i) => i.id === id);
  }
}

export function describeIncident(i: Incident): Record<string, unknown> {
  const w = incidentWindow(i);
  return {
    id: i.id,
    service: i.service,
    nodes: [...i.nodes],
    findings: i.findings.length,
    kinds: [...new Set(i.findings.map((f) => f.finding))],
    firstFinding: new Date(i.firstFinding).toISOString(),
    lastFinding: new Date(i.lastFinding).toISOString(),
    window: { from: new Date(w.from).toISOString(), to: new Date(w.to).toISOString() },
  };
}
