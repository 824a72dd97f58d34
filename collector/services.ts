// The Services a node's kube-proxy has programmed, read back from its rules:
// iptables (KUBE-SERVICES / KUBE-NODEPORTS / KUBE-SVC / KUBE-SEP …), nftables
// (kube-proxy's `service-ips` / `service-nodeports` maps and endpoint chains)
// and IPVS (virtual servers; weight 0 marks an endpoint being drained).
// Chain names and comments follow kube-proxy's proxier.go for each mode.
import type { IptablesRecord, IpvsRecord, NftObject } from '../contract/records.ts';

export interface ServiceEndpoint {
  readonly address: string;
  readonly port: number;
  /** IPVS weight 0: kube-proxy is draining it (graceful termination). */
  readonly terminating: boolean;
  /** The rule or table line that programs it, verbatim. */
  readonly raw: string;
}

export interface ProgrammedService {
  /** `ns/name:port` from kube-proxy's comments, or `TCP 10.0.0.1:80` for an IPVS virtual server. */
  readonly id: string;
  readonly protocol: string;
  /** Every address:port a client may use to reach it (ClusterIP, external, LB). */
  readonly frontends: readonly { readonly address: string; readonly port: number; readonly kind: 'cluster' | 'external' | 'loadbalancer' | 'virtual' }[];
  readonly nodePorts: readonly number[];
  readonly localTrafficPolicy: boolean;
  readonly endpoints: readonly ServiceEndpoint[];
}

interface Draft {
  id: string;
  protocol: string;
  frontends: Map<string, ProgrammedService['frontends'][number]>;
  nodePorts: Set<number>;
  local: boolean;
  endpoints: Map<string, ServiceEndpoint>;
}

function draft(map: Map<string, Draft>, id: string, protocol: string): Draft {
  let d = map.get(id);
  if (d === undefined) {
    d = { id, protocol, frontends: new Map(), nodePorts: new Set(), local: false, endpoints: new Map() };
    map.set(id, d);
  }
  if (d.protocol === '' && protocol !== '') d.protocol = protocol;
  return d;
}

const hostOf = (cidr: string | null): string | null => (cidr === null || cidr.startsWith('!') ? null : (cidr.split('/')[0] ?? null));

export function splitEndpoint(text: string): { address: string; port: number } | null {
  const bracket = text.startsWith('[');
  const i = bracket ? text.lastIndexOf(']:') : text.lastIndexOf(':');
  if (i < 0) return null;
  const port = Number(text.slice(i + (bracket ? 2 : 1)));
  if (!Number.isInteger(port)) return null;
  return { address: bracket ? text.slice(1, i) : text.slice(0, i), port };
}

/** kube-proxy comments start with `ns/name:port` (`ns/name` for an unnamed port), then maybe ` cluster IP`, ` loadbalancer IP`, ` -> 10.0.0.1:80` … */
function serviceIdOf(comment: string | null): { id: string; rest: string } | null {
  if (comment === null) return null;
  const m = /^([a-z0-9][-a-z0-9.]*\/[a-z0-9][-a-z0-9.]*(?::[-a-z0-9]*)?)(.*)$/i.exec(comment);
  return m === null ? null : { id: m[1] ?? '', rest: (m[2] ?? '').trim() };
}

export function servicesFromIptables(records: readonly IptablesRecord[]): Map<string, Draft> {
  const out = new Map<string, Draft>();
  for (const r of records) {
    if (r.kind !== 'rule') continue;
    const named = serviceIdOf(r.comment);
    if (named === null) continue;
    const protocol = r.protocol ?? '';
    const d = draft(out, named.id, protocol);
    const chain = r.chain;
    const target = r.target ?? '';
    if (chain === 'KUBE-SERVICES' || chain === 'KUBE-EXTERNAL-SERVICES') {
      const address = hostOf(r.destination);
      const port = Number(r.dport);
      if (address !== null && Number.isInteger(port)) {
        const kind = /loadbalancer IP/.test(named.rest) ? 'loadbalancer' : /external IP/.test(named.rest) ? 'external' : 'cluster';
        d.frontends.set(`${address}:${port}`, { address, port, kind });
      }
    } else if (chain === 'KUBE-NODEPORTS') {
      const port = Number(r.dport);
      if (Number.isInteger(port)) d.nodePorts.add(port);
      if (target.startsWith('KUBE-XLB-')) d.local = true;
    } else if (chain.startsWith('KUBE-EXT-') && target.startsWith('KUBE-SVL-')) {
      d.local = true;
    } else if (chain.startsWith('KUBE-SEP-') && target === 'DNAT' && r.toDestination !== null) {
      const ep = splitEndpoint(r.toDestination);
      if (ep !== null) d.endpoints.set(`${ep.address}:${ep.port}`, { ...ep, terminating: false, raw: r.raw });
    }
  }
  return out;
}

/**
 * kube-proxy's nftables mode: `service-ips` / `service-nodeports` map
 * elements carry `comment "ns/name:port"`-free verdicts into
 * `service-HASH-ns/name/proto/port` chains; endpoint chains are named
 * `endpoint-HASH-ns/name/proto/port__ip/port` and hold the `dnat to`.
 */
export function servicesFromNft(records: readonly NftObject[]): Map<string, Draft> {
  const out = new Map<string, Draft>();
  const idOfChain = (chain: string): { id: string; protocol: string } | null => {
    const m = /^(?:service|external|endpoint)-[A-Z0-9]+-([^/]+)\/([^/]+)\/([a-z]+)\/([^_]*)/.exec(chain);
    return m === null ? null : { id: `${m[1]}/${m[2]}:${m[4]}`, protocol: m[3] ?? '' };
  };
  for (const r of records) {
    if (r.kind === 'element' && (r.name === 'service-ips' || r.name === 'service-nodeports')) {
      // `10.96.0.10 . udp . 53 : goto service-…` / `udp . 30053 : goto external-…`
      const m = /^(?:(\S+) \. )?([a-z]+) \. (\d+) : goto (\S+)/.exec(r.text);
      const named = m === null ? null : idOfChain(m[4] ?? '');
      if (m === null || named === null) continue;
      const d = draft(out, named.id, named.protocol);
      if (r.name === 'service-nodeports') d.nodePorts.add(Number(m[3]));
      else if (m[1] !== undefined) d.frontends.set(`${m[1]}:${m[3]}`, { address: m[1], port: Number(m[3]), kind: 'cluster' });
    } else if (r.kind === 'chain' && r.name !== null && r.name.startsWith('endpoint-')) {
      const named = idOfChain(r.name);
      const ep = /__(.+)\/(\d+)$/.exec(r.name);
      if (named === null || ep === null) continue;
      const d = draft(out, named.id, named.protocol);
      d.endpoints.set(`${ep[1]}:${ep[2]}`, { address: ep[1] ?? '', port: Number(ep[2]), terminating: false, raw: r.raw });
    }
  }
  return out;
}

export function servicesFromIpvs(records: readonly IpvsRecord[]): Map<string, Draft> {
  const out = new Map<string, Draft>();
  const byKey = new Map<string, Draft>();
  for (const r of records) {
    if (r.kind === 'service') {
      if (r.address === null || r.port === null) continue;
      const id = `${r.proto} ${r.address.includes(':') ? `[${r.address}]` : r.address}:${r.port}`;
      const d = draft(out, id, r.proto.toLowerCase());
      d.frontends.set(`${r.address}:${r.port}`, { address: r.address, port: r.port, kind: 'virtual' });
      byKey.set(`${r.proto} ${r.address}:${r.port}`, d);
    }
  }
  for (const r of records) {
    if (r.kind !== 'destination' || r.address === null || r.port === null) continue;
    const d = byKey.get(r.service);
    if (d === undefined) continue;
    d.endpoints.set(`${r.address}:${r.port}`, { address: r.address, port: r.port, terminating: r.weight === 0, raw: r.raw });
  }
  return out;
}

export function programmedServices(input: { iptables?: readonly IptablesRecord[]; nft?: readonly NftObject[]; ipvs?: readonly IpvsRecord[] }): ProgrammedService[] {
  const merged = new Map<string, Draft>();
  for (const part of [servicesFromIptables(input.iptables ?? []), servicesFromNft(input.nft ?? []), servicesFromIpvs(input.ipvs ?? [])]) {
    for (const [id, d] of part) {
      const m = draft(merged, id, d.protocol);
      for (const [k, f] of d.frontends) m.frontends.set(k, f);
      for (const p of d.nodePorts) m.nodePorts.add(p);
      m.local ||= d.local;
      for (const [k, e] of d.endpoints) m.endpoints.set(k, e);
    }
  }
  return [...merged.values()].map((d) => ({
    id: d.id,
    protocol: d.protocol,
    frontends: [...d.frontends.values()],
    nodePorts: [...d.nodePorts].sort((a, b) => a - b),
    localTrafficPolicy: d.local,
    endpoints: [...d.endpoints.values()],
  }));
}
