// The Services a node's kube-proxy has programmed, read back from what each
// proxy mode really writes (kubernetes/kubernetes pkg/proxy/{iptables,
// nftables,ipvs}/proxier.go; their proxier_test.go expected rulesets are the
// reference the tests load):
//   iptables  comments `ns/name:port cluster IP|external IP|loadbalancer IP`
//             on KUBE-SERVICES, NodePorts in the nat table's KUBE-NODEPORTS,
//             endpoints = the DNAT targets of the KUBE-SEP chains that the
//             Service's KUBE-SVC/KUBE-SVL chains jump to; Local policy =
//             KUBE-EXT jumping to KUBE-SVL, or a `has no local endpoints` DROP;
//             the filter table's `health check node port` ACCEPT is the
//             healthCheckNodePort, not a NodePort; `has no endpoints` REJECTs
//             name Services with no endpoints. v4 and v6 rules alike.
//   nftables  `service-ips` / `service-nodeports` map elements (goto
//             service-… for a ClusterIP, external-… for external and LB
//             IPs, which the rules do not tell apart); endpoints = the `goto
//             endpoint-…` targets of the service chain's `numgen … vmap`, so
//             flushed endpoint chains left behind after a rollout are not
//             endpoints; `no-endpoint-services` / `no-endpoint-nodeports`
//             elements carry Services without endpoints; Local policy = the
//             external chain's `short-circuit pod traffic` rule, or a `drop`
//             no-endpoint verdict.
//   IPVS      virtual servers and their real servers (weight 0 = draining);
//             what each address is comes from the ipsets (KUBE-CLUSTER-IP,
//             KUBE-LOAD-BALANCER[-LOCAL], KUBE-EXTERNAL-IP[-LOCAL],
//             KUBE-NODE-PORT-*[-LOCAL-*], KUBE-HEALTH-CHECK-NODE-PORT) and
//             from kube-ipvs0, where IPVS mode binds every Service address.
// With the Kubernetes API, each Service's spec names what the rules cannot
// (LB vs external IP in nftables mode, which IPVS virtual servers belong to
// one Service) — see withApi().
import type { Address, IptablesRecord, IptablesRule, IpvsRecord, NftObject } from '../../contract/records.ts';
import type { KubeService } from '../kube/objects.ts';

export type FrontendKind = 'cluster' | 'external' | 'loadbalancer' | 'nodeport';
export type ProxyMode = 'iptables' | 'nftables' | 'ipvs';

export interface Frontend {
  readonly address: string;
  readonly port: number;
  readonly kind: FrontendKind;
  /** Traffic policy Local applies to this frontend (external, LB and NodePort frontends only). */
  readonly local?: boolean;
}

export interface ServiceEndpoint {
  readonly address: string;
  readonly port: number;
  /** IPVS weight 0: kube-proxy is draining it (graceful termination). */
  readonly terminating: boolean;
  /** The rule or table line that programs it, verbatim. */
  readonly raw: string;
}

export interface ProgrammedService {
  /** `ns/name:port` (`ns/name` for an unnamed port), or `TCP 10.0.0.1:80` for an IPVS virtual server the API did not name. */
  readonly id: string;
  readonly protocol: string;
  readonly mode: ProxyMode;
  /** Every address:port a client may use to reach it, with what kind of address it is. */
  readonly frontends: readonly Frontend[];
  readonly nodePorts: readonly number[];
  readonly healthCheckNodePort: number | null;
  /** externalTrafficPolicy: Local, as the rules (or the API) say. */
  readonly localTrafficPolicy: boolean;
  /** Where traffic is sent now. */
  readonly endpoints: readonly ServiceEndpoint[];
}

/** What the IPVS-mode reader takes from `ipset save` records (agent/sources/ipset.ts). */
export interface IpsetMember {
  readonly set: string;
  readonly address: string | null;
  readonly protocol: string | null;
  readonly port: number | null;
}

export interface ServiceSources {
  readonly iptables?: readonly IptablesRecord[];
  readonly nft?: readonly NftObject[];
  readonly ipvs?: readonly IpvsRecord[];
  readonly ipset?: readonly IpsetMember[];
  readonly addrs?: readonly Address[];
}

interface Draft {
  id: string;
  protocol: string;
  mode: ProxyMode;
  frontends: Map<string, Frontend>;
  nodePorts: Set<number>;
  healthCheckNodePort: number | null;
  local: boolean;
  endpoints: Map<string, ServiceEndpoint>;
}

type Drafts = Map<string, Draft>;

function draft(map: Drafts, id: string, protocol: string, mode: ProxyMode): Draft {
  let d = map.get(id);
  if (d === undefined) {
    d = { id, protocol, mode, frontends: new Map(), nodePorts: new Set(), healthCheckNodePort: null, local: false, endpoints: new Map() };
    map.set(id, d);
  }
  if (d.protocol === '' && protocol !== '') d.protocol = protocol;
  return d;
}

const addFrontend = (d: Draft, f: Frontend): void => {
  const key = `${f.address}|${f.port}`;
  const had = d.frontends.get(key);
  // A more specific kind wins over `cluster`/`external` guessed from a weaker line.
  if (had === undefined || rank(f.kind) > rank(had.kind) || (f.local === true && had.local !== true)) d.frontends.set(key, f);
};
const rank = (k: FrontendKind): number => ({ cluster: 1, nodeport: 1, external: 2, loadbalancer: 3 })[k];

const hostOf = (cidr: string | null): string | null => (cidr === null || cidr.startsWith('!') ? null : (cidr.split('/')[0] ?? null));
const portOf = (text: string | null | undefined): number | null => {
  const n = Number(text);
  return text !== null && text !== undefined && text !== '' && Number.isInteger(n) && n > 0 && n <= 65535 ? n : null;
};

export function splitEndpoint(text: string): { address: string; port: number } | null {
  const bracket = text.startsWith('[');
  const i = bracket ? text.lastIndexOf(']:') : text.lastIndexOf(':');
  if (i < 0) return null;
  const port = portOf(text.slice(i + (bracket ? 2 : 1)));
  if (port === null) return null;
  return { address: bracket ? text.slice(1, i) : text.slice(0, i), port };
}

/** kube-proxy comments start with `ns/name:port` (`ns/name` for an unnamed port), then maybe ` cluster IP`, ` -> 10.0.0.1:80` … */
function serviceIdOf(comment: string | null): { id: string; rest: string } | null {
  if (comment === null) return null;
  const m = /^([a-z0-9][-a-z0-9.]*\/[a-z0-9][-a-z0-9.]*(?::[-a-z0-9]*)?)(.*)$/i.exec(comment);
  return m === null ? null : { id: m[1] ?? '', rest: (m[2] ?? '').trim() };
}

// ---- iptables mode ----------------------------------------------------------

export function servicesFromIptables(records: readonly IptablesRecord[]): Drafts {
  const out: Drafts = new Map();
  // A grepped dump has no `*nat` header: its table is unknown, and KUBE-SVC/SEP/NODEPORTS rules read as nat ones.
  const rules = records.filter((r): r is IptablesRule => r.kind === 'rule').map((r) => (r.table === 'unknown' ? { ...r, table: 'nat' } : r));
  // KUBE-SEP chain → its DNAT rule, and which SEP chains each Service's SVC/SVL chains send to.
  const dnatOf = new Map<string, IptablesRule>();
  const sentTo = new Map<string, Set<string>>();
  for (const r of rules) {
    if (r.table !== 'nat') continue;
    if (r.chain.startsWith('KUBE-SEP-') && r.target === 'DNAT' && r.toDestination !== null) dnatOf.set(r.chain, r);
    const named = serviceIdOf(r.comment);
    if (named !== null && (r.chain.startsWith('KUBE-SVC-') || r.chain.startsWith('KUBE-SVL-')) && r.target?.startsWith('KUBE-SEP-')) {
      let s = sentTo.get(named.id);
      if (s === undefined) sentTo.set(named.id, (s = new Set()));
      s.add(r.target);
    }
  }
  for (const r of rules) {
    const named = serviceIdOf(r.comment);
    if (named === null) continue;
    const protocol = r.protocol ?? '';
    const target = r.target ?? '';
    const address = hostOf(r.destination);
    const port = portOf(r.dport);
    const noLocal = named.rest === 'has no local endpoints';
    if (r.table === 'nat') {
      if (r.chain === 'KUBE-SERVICES' && address !== null && port !== null) {
        const d = draft(out, named.id, protocol, 'iptables');
        const kind = named.rest.startsWith('loadbalancer IP') ? 'loadbalancer' : named.rest.startsWith('external IP') ? 'external' : 'cluster';
        addFrontend(d, { address, port, kind });
      } else if (r.chain === 'KUBE-NODEPORTS' && port !== null) {
        const d = draft(out, named.id, protocol, 'iptables');
        d.nodePorts.add(port);
        // kube-proxy < 1.24 sent Local NodePorts to KUBE-XLB-.
        if (target.startsWith('KUBE-XLB-')) d.local = true;
      } else if ((r.chain.startsWith('KUBE-EXT-') && target.startsWith('KUBE-SVL-')) || r.chain.startsWith('KUBE-XLB-')) {
        draft(out, named.id, protocol, 'iptables').local = true;
      } else if (r.chain.startsWith('KUBE-SVC-') || r.chain.startsWith('KUBE-SVL-')) {
        draft(out, named.id, protocol, 'iptables');
      }
    } else if (r.table === 'filter') {
      if (r.chain === 'KUBE-NODEPORTS' && named.rest === 'health check node port' && port !== null) {
        draft(out, named.id, protocol, 'iptables').healthCheckNodePort = port;
      } else if ((r.chain === 'KUBE-SERVICES' || r.chain === 'KUBE-EXTERNAL-SERVICES') && (named.rest === 'has no endpoints' || noLocal)) {
        const d = draft(out, named.id, protocol, 'iptables');
        if (noLocal) d.local = true;
        // `-m addrtype --dst-type LOCAL --dport N` is the NodePort; `-d IP --dport N` a frontend.
        if (address === null && port !== null && r.args.includes('--dst-type')) d.nodePorts.add(port);
        else if (address !== null && port !== null) addFrontend(d, { address, port, kind: r.chain === 'KUBE-SERVICES' ? 'cluster' : 'external', ...(noLocal ? { local: true } : {}) });
      }
    }
  }
  for (const [id, seps] of sentTo) {
    const d = out.get(id);
    if (d === undefined) continue;
    for (const sep of seps) {
      const rule = dnatOf.get(sep);
      const ep = rule?.toDestination ? splitEndpoint(rule.toDestination) : null;
      if (rule !== undefined && ep !== null) d.endpoints.set(`${ep.address}|${ep.port}`, { ...ep, terminating: false, raw: rule.raw });
    }
  }
  // Old kube-proxy wrote SVC→SEP jumps without comments: fall back to the SEP's own comment.
  for (const rule of dnatOf.values()) {
    const named = serviceIdOf(rule.comment);
    const d = named === null ? undefined : out.get(named.id);
    const ep = rule.toDestination ? splitEndpoint(rule.toDestination) : null;
    if (named !== null && d !== undefined && !sentTo.has(named.id) && ep !== null) d.endpoints.set(`${ep.address}|${ep.port}`, { ...ep, terminating: false, raw: rule.raw });
  }
  for (const d of out.values()) if (d.local) markLocal(d);
  return out;
}

function markLocal(d: Draft): void {
  for (const [k, f] of d.frontends) if (f.kind !== 'cluster' && f.local !== true) d.frontends.set(k, { ...f, local: true });
}

// ---- nftables mode -----------------------------------------------------------

/** `service-HASH-ns/name/proto/port`, `external-…`, `endpoint-…__ip/port` (nftables proxier's servicePortChainNameBase). */
function nftChainId(chain: string): { id: string; protocol: string } | null {
  const m = /^(?:service|external|endpoint|local|firewall)-[A-Z0-9]+-([^/]+)\/([^/]+)\/([a-z]+)\/([^_]*)/.exec(chain);
  if (m === null) return null;
  return { id: m[4] === '' ? `${m[1]}/${m[2]}` : `${m[1]}/${m[2]}:${m[4]}`, protocol: m[3] ?? '' };
}

/** An nft element as rendered by agent/sources/nft.ts: `ADDR . PROTO . PORT [comment "…"] : VERDICT` or `PROTO . PORT …`. */
const NFT_ELEMENT = /^(?:(\S+) \. )?([a-z]+) \. (\d+)(?: comment "([^"]*)")? : (.+)$/;

export function servicesFromNft(records: readonly NftObject[]): Drafts {
  const out: Drafts = new Map();
  const kubeProxy = records.filter((r) => r.table === 'kube-proxy' && (r.family === 'ip' || r.family === 'ip6'));
  const endpointChains = new Map<string, NftObject>();
  const dnat = new Map<string, NftObject>();
  for (const r of kubeProxy) {
    if (r.kind === 'chain' && r.name?.startsWith('endpoint-')) endpointChains.set(`${r.family} ${r.name}`, r);
    if (r.kind === 'rule' && r.name?.startsWith('endpoint-') && /\bdnat\b/.test(r.text)) dnat.set(`${r.family} ${r.name}`, r);
  }
  for (const r of kubeProxy) {
    if (r.kind === 'element') {
      const m = NFT_ELEMENT.exec(r.text);
      if (m === null) continue;
      const [, address, protocol = '', portText, comment, verdict = ''] = m;
      const port = portOf(portText);
      if (port === null) continue;
      const target = /^goto (\S+)$/.exec(verdict)?.[1] ?? null;
      if (r.name === 'service-ips' || r.name === 'service-nodeports') {
        const named = target === null ? null : nftChainId(target);
        if (named === null || target === null) continue;
        const d = draft(out, named.id, named.protocol || protocol, 'nftables');
        if (r.name === 'service-nodeports') d.nodePorts.add(port);
        else if (address !== undefined) addFrontend(d, { address, port, kind: target.startsWith('external-') ? 'external' : 'cluster' });
      } else if (r.name === 'firewall-ips' && address !== undefined && target !== null) {
        // Only LoadBalancer IPs get loadBalancerSourceRanges firewalls: the one nftables-mode rule that tells an LB IP from an external IP.
        const named = nftChainId(target);
        if (named !== null) addFrontend(draft(out, named.id, named.protocol || protocol, 'nftables'), { address, port, kind: 'loadbalancer' });
      } else if (r.name === 'no-endpoint-services' || r.name === 'no-endpoint-nodeports') {
        const named = serviceIdOf(comment ?? null);
        if (named === null) continue;
        const d = draft(out, named.id, protocol, 'nftables');
        // `drop`: external traffic to a Local Service with no local endpoints; `goto reject-chain`: no endpoints at all.
        const localDrop = verdict === 'drop';
        if (localDrop) d.local = true;
        if (r.name === 'no-endpoint-nodeports') d.nodePorts.add(port);
        else if (address !== undefined) addFrontend(d, { address, port, kind: localDrop ? 'external' : 'cluster' });
      }
    } else if (r.kind === 'rule' && r.name !== null) {
      const named = nftChainId(r.name);
      if (named === null) continue;
      if (r.name.startsWith('service-') || r.name.startsWith('local-')) {
        // The vmap (or the single goto) lists exactly the endpoint chains traffic is sent to now.
        for (const m of r.text.matchAll(/goto (endpoint-\S+?)(?=[ ,}]|$)/g)) {
          const chain = m[1] ?? '';
          const ep = /__(.+)\/(\d+)$/.exec(chain);
          const port = portOf(ep?.[2]);
          if (ep === null || port === null) continue;
          const d = draft(out, named.id, named.protocol, 'nftables');
          const address = ep[1] ?? '';
          const line = dnat.get(`${r.family} ${chain}`) ?? endpointChains.get(`${r.family} ${chain}`) ?? r;
          d.endpoints.set(`${address}|${port}`, { address, port, terminating: false, raw: line.raw });
        }
      } else if (r.name.startsWith('external-') && r.text === 'short-circuit pod traffic') {
        draft(out, named.id, named.protocol, 'nftables').local = true;
      }
    }
  }
  for (const d of out.values()) if (d.local) markLocal(d);
  return out;
}

// ---- IPVS mode -----------------------------------------------------------------

/** IPVS mode's ipsets (pkg/proxy/ipvs/ipset.go) and what membership says about an address or port. */
const IPSET_KIND: Readonly<Record<string, { kind: FrontendKind; local: boolean }>> = {
  'KUBE-CLUSTER-IP': { kind: 'cluster', local: false },
  'KUBE-LOAD-BALANCER': { kind: 'loadbalancer', local: false },
  'KUBE-LOAD-BALANCER-LOCAL': { kind: 'loadbalancer', local: true },
  'KUBE-EXTERNAL-IP': { kind: 'external', local: false },
  'KUBE-EXTERNAL-IP-LOCAL': { kind: 'external', local: true },
};
const NODE_PORT_SET = /^KUBE-NODE-PORT-(LOCAL-)?(TCP|UDP|SCTP-HASH)$/;

export interface IpvsClassification {
  /** `address|port|proto` → kind and locality, from the ipsets. */
  readonly addresses: ReadonlyMap<string, { kind: FrontendKind; local: boolean }>;
  /** NodePort → Local? */
  readonly nodePorts: ReadonlyMap<string, boolean>;
  readonly healthCheckNodePorts: ReadonlySet<number>;
  /** Addresses bound on kube-ipvs0. */
  readonly bound: ReadonlySet<string>;
  readonly haveIpsets: boolean;
}

export function classifyIpvs(ipset: readonly IpsetMember[], addrs: readonly Address[]): IpvsClassification {
  const addresses = new Map<string, { kind: FrontendKind; local: boolean }>();
  const nodePorts = new Map<string, boolean>();
  const healthCheckNodePorts = new Set<number>();
  for (const m of ipset) {
    const k = IPSET_KIND[m.set];
    if (k !== undefined && m.address !== null && m.port !== null) {
      const key = `${m.address}|${m.port}|${(m.protocol ?? '').toLowerCase()}`;
      const had = addresses.get(key);
      if (had === undefined || rank(k.kind) > rank(had.kind) || k.local) addresses.set(key, { kind: k.kind === 'cluster' && had ? had.kind : k.kind, local: k.local || (had?.local ?? false) });
      continue;
    }
    const np = NODE_PORT_SET.exec(m.set);
    if (np !== null && m.port !== null) {
      const proto = (np[2] ?? '').startsWith('SCTP') ? 'sctp' : (np[2] ?? '').toLowerCase();
      const key = `${m.port}|${proto}`;
      nodePorts.set(key, (nodePorts.get(key) ?? false) || np[1] !== undefined);
    }
    if (m.set === 'KUBE-HEALTH-CHECK-NODE-PORT' && m.port !== null) healthCheckNodePorts.add(m.port);
  }
  const bound = new Set(addrs.filter((a) => a.ifname === 'kube-ipvs0').map((a) => a.address));
  return { addresses, nodePorts, healthCheckNodePorts, bound, haveIpsets: ipset.length > 0 };
}

/**
 * IPVS virtual servers, one draft each: IPVS itself does not link a
 * Service's ClusterIP, LB IP and NodePort virtual servers (the API does, in
 * withApi()). Without virtual servers (ipvsadm missing or this kernel without
 * IPVS) the ipsets still say which addresses are Service frontends.
 */
export function servicesFromIpvs(records: readonly IpvsRecord[], c: IpvsClassification): Drafts {
  const out: Drafts = new Map();
  const byKey = new Map<string, Draft>();
  const kindOf = (address: string, port: number, proto: string): Frontend => {
    const k = c.addresses.get(`${address}|${port}|${proto}`);
    if (k !== undefined) return { address, port, kind: k.kind, ...(k.kind !== 'cluster' ? { local: k.local } : {}) };
    const np = c.nodePorts.get(`${port}|${proto}`);
    if (np !== undefined && !c.bound.has(address)) return { address, port, kind: 'nodeport', local: np };
    // IPVS binds every Service address on kube-ipvs0; without ipsets a bound address is at least a ClusterIP.
    return { address, port, kind: 'cluster' };
  };
  for (const r of records) {
    if (r.kind !== 'service' || r.address === null || r.port === null) continue;
    const proto = r.proto.toLowerCase();
    const id = `${r.proto} ${r.address.includes(':') ? `[${r.address}]` : r.address}:${r.port}`;
    const d = draft(out, id, proto, 'ipvs');
    const f = kindOf(r.address, r.port, proto);
    addFrontend(d, f);
    if (f.kind === 'nodeport') d.nodePorts.add(r.port);
    if (f.local === true) d.local = true;
    byKey.set(`${r.proto} ${r.address}:${r.port}`, d);
  }
  for (const r of records) {
    if (r.kind !== 'destination' || r.address === null || r.port === null) continue;
    const d = byKey.get(r.service);
    if (d === undefined) continue;
    d.endpoints.set(`${r.address}|${r.port}`, { address: r.address, port: r.port, terminating: r.weight === 0, raw: r.raw });
  }
  // Frontends the ipsets name that have no virtual server here.
  const known = new Set([...out.values()].flatMap((d) => [...d.frontends.values()].map((f) => `${f.address}|${f.port}`)));
  for (const [key, k] of c.addresses) {
    const [address = '', portText, proto = ''] = key.split('|');
    const port = portOf(portText);
    if (port === null || known.has(`${address}|${port}`)) continue;
    const d = draft(out, `${proto.toUpperCase()} ${address.includes(':') ? `[${address}]` : address}:${port}`, proto, 'ipvs');
    addFrontend(d, { address, port, kind: k.kind, ...(k.kind !== 'cluster' ? { local: k.local } : {}) });
    if (k.local) d.local = true;
  }
  return out;
}

// ---- the API: what the rules cannot say ---------------------------------------

export interface ApiServices {
  /** The Service a frontend address:port belongs to, as of now. */
  serviceForAddress(address: string, port: number, protocol: string): KubeService | null;
}

/**
 * Names IPVS virtual servers after their Service (merging a Service's
 * ClusterIP, LB, external and NodePort virtual servers into `ns/name:port`),
 * and takes from each Service's spec the kind of every frontend address and
 * its traffic policy.
 */
function withApi(drafts: Drafts, api: ApiServices): Drafts {
  const out: Drafts = new Map();
  for (const d of drafts.values()) {
    let target: Draft | null = null;
    let spec: { svc: KubeService; portName: string } | null = null;
    for (const f of d.frontends.values()) {
      const svc = api.serviceForAddress(f.address, f.port, d.protocol || 'tcp');
      const port = svc?.ports.find((p) => (f.kind === 'nodeport' ? p.nodePort === f.port : p.port === f.port) && p.protocol.toLowerCase() === (d.protocol || 'tcp'));
      if (svc !== null && port !== undefined) {
        spec = { svc, portName: port.name };
        break;
      }
    }
    const id = spec === null ? d.id : `${spec.svc.namespace}/${spec.svc.name}${spec.portName === '' ? '' : `:${spec.portName}`}`;
    target = out.get(id) ?? null;
    if (target === null) {
      target = { ...d, id, frontends: new Map(), nodePorts: new Set(d.nodePorts), endpoints: new Map(d.endpoints) };
      out.set(id, target);
    } else {
      for (const p of d.nodePorts) target.nodePorts.add(p);
      for (const [k, e] of d.endpoints) target.endpoints.set(k, e);
      target.local ||= d.local;
      target.healthCheckNodePort ??= d.healthCheckNodePort;
    }
    for (const f of d.frontends.values()) addFrontend(target, spec === null ? f : apiKind(f, spec.svc));
    if (spec !== null) {
      const local = spec.svc.externalTrafficPolicy === 'Local';
      target.local ||= local;
      target.healthCheckNodePort ??= spec.svc.healthCheckNodePort;
    }
  }
  for (const d of out.values()) if (d.local) markLocal(d);
  return out;
}

function apiKind(f: Frontend, svc: KubeService): Frontend {
  if (f.kind === 'nodeport') return f;
  const kind: FrontendKind = svc.clusterIPs.includes(f.address)
    ? 'cluster'
    : svc.loadBalancerIngress.some((i) => i.ip === f.address)
      ? 'loadbalancer'
      : svc.externalIPs.includes(f.address)
        ? 'external'
        : f.kind;
  const local = kind !== 'cluster' && svc.externalTrafficPolicy === 'Local';
  // The API is the authority on kinds: replace rather than rank.
  return { address: f.address, port: f.port, kind, ...(kind !== 'cluster' ? { local } : {}) };
}

// ---- all modes -------------------------------------------------------------------

export function programmedServices(input: ServiceSources, api: ApiServices | null = null): ProgrammedService[] {
  const classification = classifyIpvs(input.ipset ?? [], input.addrs ?? []);
  let merged: Drafts = new Map();
  for (const part of [servicesFromIptables(input.iptables ?? []), servicesFromNft(input.nft ?? []), servicesFromIpvs(input.ipvs ?? [], classification)]) {
    for (const [id, d] of part) {
      const m = draft(merged, id, d.protocol, d.mode);
      for (const f of d.frontends.values()) addFrontend(m, f);
      for (const p of d.nodePorts) m.nodePorts.add(p);
      m.healthCheckNodePort ??= d.healthCheckNodePort;
      m.local ||= d.local;
      for (const [k, e] of d.endpoints) m.endpoints.set(k, e);
    }
  }
  if (api !== null) merged = withApi(merged, api);
  return [...merged.values()]
    .map((d) => ({
      id: d.id,
      protocol: d.protocol,
      mode: d.mode,
      frontends: [...d.frontends.values()].sort((a, b) => cmp(a.address, b.address) || a.port - b.port),
      nodePorts: [...d.nodePorts].sort((a, b) => a - b),
      healthCheckNodePort: d.healthCheckNodePort,
      localTrafficPolicy: d.local,
      endpoints: [...d.endpoints.values()].sort((a, b) => cmp(a.address, b.address) || a.port - b.port),
    }))
    .sort((a, b) => cmp(a.id, b.id));
}

const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** The JSON `conntrail services --json` and `GET /api/nodes/:node/services` serve: what kube-proxy programmed, without the raw lines. */
export function describeServices(services: readonly ProgrammedService[]): object[] {
  return services.map((s) => ({
    id: s.id,
    protocol: s.protocol,
    mode: s.mode,
    frontends: s.frontends.map((f) => ({ address: f.address, port: f.port, kind: f.kind, ...(f.local !== undefined ? { local: f.local } : {}) })),
    nodePorts: s.nodePorts,
    healthCheckNodePort: s.healthCheckNodePort,
    localTrafficPolicy: s.localTrafficPolicy,
    endpoints: s.endpoints.map((e) => ({ address: e.address, port: e.port, terminating: e.terminating })),
  }));
}
