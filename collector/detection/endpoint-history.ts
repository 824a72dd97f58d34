// When each endpoint of each Service appeared, started draining and left, as
// programmed on one node. Detectors ask "had this endpoint already left the
// Service when this connection was sent to it?" and "how many samples has
// the node taken since?" (kube-proxy's own cleanup must get its chance).
import type { ProgrammedService, ServiceEndpoint } from './services.ts';

export interface EndpointSpan {
  readonly service: string;
  readonly endpoint: string;
  readonly firstSeen: number;
  terminatingSince: number | null;
  removedAt: number | null;
  /** The last rule or IPVS line that programmed it, verbatim, and the sample time it read that way. */
  raw: string;
  rawAt: number;
}

export type EndpointState = 'serving' | 'terminating' | 'removed' | 'unknown';

/** What detectors may read of the history: nothing that changes it. */
export interface EndpointTimeline {
  readonly services: readonly ProgrammedService[];
  span(service: string, endpoint: string): Readonly<EndpointSpan> | undefined;
  stateAt(service: string, endpoint: string, time: number): EndpointState;
  all(): readonly Readonly<EndpointSpan>[];
}

export class EndpointHistory implements EndpointTimeline {
  readonly #spans = new Map<string, Map<string, EndpointSpan>>();
  #services: readonly ProgrammedService[] = [];

  get services(): readonly ProgrammedService[] {
    return this.#services;
  }

  /** Records the Services programmed at `time`; anything no longer there has left at `time`. */
  update(time: number, services: readonly ProgrammedService[]): void {
    this.#services = services;
    const seen = new Set<string>();
    for (const svc of services) {
      let spans = this.#spans.get(svc.id);
      if (spans === undefined) {
        spans = new Map();
        this.#spans.set(svc.id, spans);
      }
      for (const ep of svc.endpoints) {
        const key = endpointKey(ep);
        seen.add(`${svc.id}|${key}`);
        const span = spans.get(key);
        if (span === undefined || span.removedAt !== null) {
          spans.set(key, { service: svc.id, endpoint: key, firstSeen: time, terminatingSince: ep.terminating ? time : null, removedAt: null, raw: ep.raw, rawAt: time });
          continue;
        }
        if (span.raw !== ep.raw) {
          span.raw = ep.raw;
          span.rawAt = time;
        }
        if (ep.terminating && span.terminatingSince === null) span.terminatingSince = time;
        if (!ep.terminating) span.terminatingSince = null;
      }
    }
    for (const [id, spans] of this.#spans)
      for (const [key, span] of spans) if (span.removedAt === null && !seen.has(`${id}|${key}`)) span.removedAt = time;
  }

  span(service: string, endpoint: string): EndpointSpan | undefined {
    return this.#spans.get(service)?.get(endpoint);
  }

  /** The state of `endpoint` in `service` at `time`. */
  stateAt(service: string, endpoint: string, time: number): EndpointState {
    const s = this.span(service, endpoint);
    if (s === undefined || s.firstSeen > time) return 'unknown';
    if (s.removedAt !== null && s.removedAt <= time) return 'removed';
    if (s.terminatingSince !== null && s.terminatingSince <= time) return 'terminating';
    return 'serving';
  }

  all(): EndpointSpan[] {
    return [...this.#spans.values()].flatMap((m) => [...m.values()]);
  }
}

export const endpointKey = (ep: Pick<ServiceEndpoint, 'address' | 'port'>): string =>
  ep.address.includes(':') ? `[${ep.address}]:${ep.port}` : `${ep.address}:${ep.port}`;
