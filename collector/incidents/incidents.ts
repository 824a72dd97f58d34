// An error finding opens an incident; later findings on the same Service
// join it while it is open. An incident covers the window from 2 minutes
// before its first finding to 1 minute after its last: what a bundle holds.
import type { FindingLine } from '../detection/aggregate.ts';
import type { Bounds } from '../state/bounds.ts';

/** Incidents held at once, and finding lines per incident (they are folded already; more is a storm). */
export const MAX_INCIDENTS = 1_000;
export const MAX_INCIDENT_FINDINGS = 2_000;

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
  readonly #windowMs: number;
  readonly #bounds: Bounds | null;
  /** Ids keep counting across pruning, so an id never names two incidents. */
  #opened = 0;

  constructor(windowMs = 15 * 60_000, bounds: Bounds | null = null) {
    this.#windowMs = windowMs;
    this.#bounds = bounds;
  }

  /** Drops incidents whose window ended longer ago than the history window: their bundle could no longer be built. */
  prune(now: number): void {
    let drop = 0;
    while (drop < this.#all.length && now - incidentWindow(this.#all[drop] as Incident).to > this.#windowMs) drop++;
    if (drop > 0) this.#all.splice(0, drop);
  }

  /** Returns the incident a finding opened, or null when it joined one (or opened none). */
  add(line: FindingLine): Incident | null {
    this.prune(line.time);
    const open = this.#all.find((i) => i.service === line.service && line.time - i.lastFinding <= JOIN_MS);
    if (open !== undefined) {
      if (open.findings.length >= MAX_INCIDENT_FINDINGS) {
        this.#bounds?.hit('incident.findings', open.id, MAX_INCIDENT_FINDINGS, 'further finding lines are logged but not kept in the incident');
        open.lastFinding = Math.max(open.lastFinding, line.time);
        open.nodes.add(line.node);
        return null;
      }
      open.findings.push(line);
      open.nodes.add(line.node);
      open.lastFinding = Math.max(open.lastFinding, line.time);
      return null;
    }
    if (line.severity !== 'error') return null;
    const stamp = new Date(line.time).toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    if (this.#all.length >= MAX_INCIDENTS) {
      this.#all.shift();
      this.#bounds?.hit('incidents', 'collector', MAX_INCIDENTS, 'the oldest incident was dropped to make room');
    }
    this.#opened++;
    const incident: Incident = { id: `${stamp}-${this.#opened}`, service: line.service, nodes: new Set([line.node]), findings: [line], firstFinding: line.time, lastFinding: line.time };
    this.#all.push(incident);
    return incident;
  }

  /** Incidents reloaded from the store at start, oldest first; new ids count on after `opened`. */
  restore(incidents: readonly Incident[], opened: number): void {
    this.#all.splice(0, this.#all.length, ...incidents.slice(-MAX_INCIDENTS));
    this.#opened = Math.max(this.#opened, opened);
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
