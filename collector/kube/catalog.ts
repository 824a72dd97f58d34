// The cluster as the Kubernetes API told it, over time: every version of
// every Service, and each endpoint's life in each Service (which pod, which
// node, its ready/serving/terminating conditions and when they changed, when
// it left). Queries are "as of time T", so the collector asking live and a
// replay that loads a bundle's recorded events first get the same answers.
import type { KubeEndpointSlice, KubeService } from './objects.ts';

export type KubeEvent =
  | { readonly time: number; readonly kind: 'service'; readonly service: KubeService }
  | { readonly time: number; readonly kind: 'service-deleted'; readonly namespace: string; readonly name: string }
  | { readonly time: number; readonly kind: 'slice'; readonly slice: KubeEndpointSlice }
  | { readonly time: number; readonly kind: 'slice-deleted'; readonly namespace: string; readonly name: string };

export interface ConditionChange {
  readonly time: number;
  readonly ready: boolean | null;
  readonly serving: boolean | null;
  readonly terminating: boolean | null;
}

export interface PodEndpointSpan {
  /** `namespace/name` of the Service. */
  readonly service: string;
  readonly address: string;
  readonly port: number | null;
  readonly pod: string | null;
  readonly nodeName: string | null;
  readonly firstSeen: number;
  readonly conditions: ConditionChange[];
  removedAt: number | null;
  /** The endpoint as the EndpointSlice last listed it. */
  raw: string;
  slice: string;
}

export type PodEndpointState = 'ready' | 'not-ready' | 'terminating' | 'removed';

export interface PodEndpointAt {
  readonly span: PodEndpointSpan;
  readonly state: PodEndpointState;
  /** When it entered that state. */
  readonly since: number;
}

export interface KubeView {
  /** Goes up with every change the API reported: what was derived from an older revision may be stale. */
  revision(): number;
  serviceAt(namespacedName: string, time: number): KubeService | null;
  /** The Service a client reached at address:port (cluster IP, external IP, LB ingress IP, or a NodePort). */
  serviceForAddress(address: string, port: number, protocol: string, time: number): KubeService | null;
  endpointAt(namespacedName: string, address: string, port: number | null, time: number): PodEndpointAt | null;
  /** Any Service's endpoint with this address (the pod behind an IP), as of `time`. */
  podAt(address: string, time: number): PodEndpointAt | null;
}

const nsName = (namespace: string, name: string): string => `${namespace}/${name}`;

export class KubeCatalog implements KubeView {
  readonly #services = new Map<string, { time: number; service: KubeService | null }[]>();
  readonly #slices = new Map<string, KubeEndpointSlice>();
  /** Service → endpoint key → spans, oldest first (an address can leave and come back). */
  readonly #spans = new Map<string, Map<string, PodEndpointSpan[]>>();
  readonly #byAddress = new Map<string, PodEndpointSpan[]>();
  readonly #events: KubeEvent[] = [];
  #revision = 0;

  revision(): number {
    return this.#revision;
  }

  apply(event: KubeEvent): void {
    this.#revision++;
    this.#events.push(event);
    switch (event.kind) {
      case 'service': {
        const key = nsName(event.service.namespace, event.service.name);
        this.#versions(key).push({ time: event.time, service: event.service });
        return;
      }
      case 'service-deleted':
        this.#versions(nsName(event.namespace, event.name)).push({ time: event.time, service: null });
        return;
      case 'slice': {
        const key = nsName(event.slice.namespace, event.slice.name);
        const before = this.#slices.get(key);
        this.#slices.set(key, event.slice);
        if (before?.service && before.service !== event.slice.service) this.#reconcile(event.slice.namespace, before.service, event.time);
        if (event.slice.service !== null) this.#reconcile(event.slice.namespace, event.slice.service, event.time);
        return;
      }
      case 'slice-deleted': {
        const key = nsName(event.namespace, event.name);
        const before = this.#slices.get(key);
        this.#slices.delete(key);
        if (before?.service) this.#reconcile(event.namespace, before.service, event.time);
        return;
      }
    }
  }

  /** Every event applied, in order: what a bundle records so a replay sees the same cluster. */
  events(from = -Infinity, to = Infinity): KubeEvent[] {
    return this.#events.filter((e) => e.time >= from && e.time <= to);
  }

  /** The objects present at `time`, as events stamped `time`: where a bundle's window starts. */
  stateAt(time: number): KubeEvent[] {
    const out: KubeEvent[] = [];
    for (const versions of this.#services.values()) {
      const v = latest(versions, time);
      if (v?.service) out.push({ time, kind: 'service', service: v.service });
    }
    const slices = new Map<string, KubeEndpointSlice>();
    for (const e of this.#events) {
      if (e.time > time) break;
      if (e.kind === 'slice') slices.set(nsName(e.slice.namespace, e.slice.name), e.slice);
      if (e.kind === 'slice-deleted') slices.delete(nsName(e.namespace, e.name));
    }
    for (const slice of slices.values()) out.push({ time, kind: 'slice', slice });
    return out;
  }

  /** Forgets what ended before `time`, keeping what was present then. */
  prune(time: number): void {
    const kept = this.stateAt(time).map((e) => e);
    const recent = this.#events.filter((e) => e.time > time);
    this.#events.length = 0;
    for (const e of kept) this.#events.push(e);
    for (const e of recent) this.#events.push(e);
    for (const [key, versions] of this.#services) {
      const current = latest(versions, time);
      const later = versions.filter((v) => v.time > time);
      if (current?.service) later.unshift(current);
      if (later.length === 0) this.#services.delete(key);
      else this.#services.set(key, later);
    }
    for (const [service, byKey] of this.#spans)
      for (const [key, spans] of byKey) {
        const alive = spans.filter((s) => s.removedAt === null || s.removedAt > time);
        if (alive.length === 0) byKey.delete(key);
        else byKey.set(key, alive);
        if (byKey.size === 0) this.#spans.delete(service);
      }
    for (const [address, spans] of this.#byAddress) {
      const alive = spans.filter((s) => s.removedAt === null || s.removedAt > time);
      if (alive.length === 0) this.#byAddress.delete(address);
      else this.#byAddress.set(address, alive);
    }
  }

  serviceAt(namespacedName: string, time: number): KubeService | null {
    const versions = this.#services.get(namespacedName);
    return versions === undefined ? null : (latest(versions, time)?.service ?? null);
  }

  serviceForAddress(address: string, port: number, protocol: string, time: number): KubeService | null {
    const proto = protocol.toUpperCase();
    let byNodePort: KubeService | null = null;
    for (const versions of this.#services.values()) {
      const svc = latest(versions, time)?.service;
      if (!svc) continue;
      const ports = svc.ports.filter((p) => p.protocol.toUpperCase() === proto);
      const frontends = [...svc.clusterIPs, ...svc.externalIPs, ...svc.loadBalancerIngress.flatMap((i) => (i.ip === null ? [] : [i.ip]))];
      if (frontends.includes(address) && ports.some((p) => p.port === port)) return svc;
      if (byNodePort === null && ports.some((p) => p.nodePort === port)) byNodePort = svc;
    }
    return byNodePort;
  }

  endpointAt(namespacedName: string, address: string, port: number | null, time: number): PodEndpointAt | null {
    const byKey = this.#spans.get(namespacedName);
    if (byKey === undefined) return null;
    const exact = port === null ? undefined : byKey.get(endpointKey(address, port));
    const candidates = exact ?? [...byKey.values()].flat().filter((s) => s.address === address);
    return stateOf(candidates, time);
  }

  podAt(address: string, time: number): PodEndpointAt | null {
    return stateOf(this.#byAddress.get(address) ?? [], time);
  }

  /** Every endpoint span, for bundles and the report. */
  spans(): PodEndpointSpan[] {
    return [...this.#spans.values()].flatMap((m) => [...m.values()].flat());
  }

  #versions(key: string): { time: number; service: KubeService | null }[] {
    let v = this.#services.get(key);
    if (v === undefined) {
      v = [];
      this.#services.set(key, v);
    }
    return v;
  }

  /** Brings one Service's endpoint spans in line with the union of its current slices. */
  #reconcile(namespace: string, serviceName: string, time: number): void {
    const service = nsName(namespace, serviceName);
    const current = new Map<string, { address: string; port: number | null; ep: KubeEndpointSlice['endpoints'][number]; slice: string }>();
    for (const slice of this.#slices.values()) {
      if (slice.namespace !== namespace || slice.service !== serviceName) continue;
      // A slice without ports still names its endpoints' addresses.
      const ports = slice.ports.length > 0 ? slice.ports.map((p) => p.port) : [null];
      for (const ep of slice.endpoints)
        for (const address of ep.addresses) for (const port of ports) current.set(endpointKey(address, port), { address, port, ep, slice: slice.name });
    }
    let byKey = this.#spans.get(service);
    if (byKey === undefined) {
      byKey = new Map();
      this.#spans.set(service, byKey);
    }
    for (const [key, { address, port, ep, slice }] of current) {
      const spans = byKey.get(key) ?? [];
      byKey.set(key, spans);
      const open = spans.at(-1);
      const conditions = { time, ready: ep.ready, serving: ep.serving, terminating: ep.terminating };
      if (open === undefined || open.removedAt !== null || open.pod !== ep.pod) {
        if (open !== undefined && open.removedAt === null) open.removedAt = time;
        const span: PodEndpointSpan = { service, address, port, pod: ep.pod, nodeName: ep.nodeName, firstSeen: time, conditions: [conditions], removedAt: null, raw: ep.raw, slice };
        spans.push(span);
        const same = this.#byAddress.get(address) ?? [];
        same.push(span);
        this.#byAddress.set(address, same);
        continue;
      }
      open.raw = ep.raw;
      open.slice = slice;
      const last = open.conditions.at(-1);
      if (last === undefined || last.ready !== ep.ready || last.serving !== ep.serving || last.terminating !== ep.terminating) open.conditions.push(conditions);
    }
    for (const [key, spans] of byKey) {
      const open = spans.at(-1);
      if (open !== undefined && open.removedAt === null && !current.has(key)) open.removedAt = time;
    }
  }
}

export const endpointKey = (address: string, port: number | null): string => (address.includes(':') ? `[${address}]:${port ?? '*'}` : `${address}:${port ?? '*'}`);

function latest<T extends { time: number }>(versions: readonly T[], time: number): T | undefined {
  for (let i = versions.length - 1; i >= 0; i--) {
    const v = versions[i];
    if (v !== undefined && v.time <= time) return v;
  }
  return undefined;
}

function stateOf(spans: readonly PodEndpointSpan[], time: number): PodEndpointAt | null {
  let best: PodEndpointSpan | undefined;
  for (const s of spans) if (s.firstSeen <= time && (best === undefined || s.firstSeen >= best.firstSeen)) best = s;
  if (best === undefined) return null;
  if (best.removedAt !== null && best.removedAt <= time) return { span: best, state: 'removed', since: best.removedAt };
  const c = latest(best.conditions, time);
  if (c === undefined) return null;
  // EndpointConditions: unset `ready` means ready; `terminating` wins over both.
  const state: PodEndpointState = c.terminating === true ? 'terminating' : c.ready === false ? 'not-ready' : 'ready';
  let since = c.time;
  for (let i = best.conditions.indexOf(c) - 1; i >= 0; i--) {
    const prev = best.conditions[i];
    if (prev === undefined) break;
    const prevState: PodEndpointState = prev.terminating === true ? 'terminating' : prev.ready === false ? 'not-ready' : 'ready';
    if (prevState !== state) break;
    since = prev.time;
  }
  return { span: best, state, since };
}
