// What kube-proxy writes on a node, rendered from a small Service model, and
// applied the way kube-proxy applies it. Shapes, chain names, comments and
// hashes follow kubernetes/kubernetes:
//   pkg/proxy/iptables/proxier.go   syncProxyRules, writeServiceToEndpointRules,
//                                   iptablesJumpChains, portProtoHash,
//                                   servicePortEndpointChainName, computeProbability
//   pkg/proxy/iptables/proxier_test.go / cleanup_test.go (expected restore text)
//   pkg/proxy/nftables/proxier.go   setupNFTables, syncProxyRules, hashAndTruncate,
//                                   servicePortChainNameBase, servicePortEndpointChainNameBase
//   pkg/proxy/nftables/proxier_test.go (baseRules, TestOverallNFTablesRules)
//   pkg/proxy/ipvs/proxier.go       syncProxyRules, writeIptablesRules, ipsetInfo,
//                                   ipsetWithIptablesChain, iptablesJumpChain,
//                                   acceptIPVSTraffic, syncEndpoint (the v1.29+
//                                   version with KUBE-IPVS-FILTER / -OUT-FILTER)
//   pkg/proxy/ipvs/ipset.go         set names and comments; ipvs/ipset/ipset.go
//                                   createSet, Entry.String
//   pkg/proxy/ipvs/proxier_test.go  expected ipset members and iptables jumps
//   pkg/proxy/topology.go           CategorizeEndpoints
import { createHash } from 'node:crypto';
import type { Lab } from './netns.ts';

export type Protocol = 'tcp' | 'udp';

export interface EndpointModel {
  readonly ip: string;
  /** The target port on the pod. */
  readonly port: number;
  readonly nodeName: string;
  readonly ready: boolean;
  /** A terminating endpoint is assumed still serving: kube-proxy falls back to those when none is ready. */
  readonly terminating?: boolean;
}

export interface ServiceModel {
  readonly namespace: string;
  readonly name: string;
  /** `''` for an unnamed port (then the service port name is just `ns/name`, as in seed 000). */
  readonly portName: string;
  readonly protocol: Protocol;
  readonly clusterIP: string;
  readonly port: number;
  readonly nodePort?: number;
  readonly loadBalancerIP?: string;
  readonly externalTrafficPolicy: 'Cluster' | 'Local';
  /** Only with externalTrafficPolicy Local: the filter ACCEPT rule kube-proxy writes for its health-check server. */
  readonly healthCheckNodePort?: number;
  /** Makes kube-proxy route LB traffic through a KUBE-FW chain (modern kube-proxy creates KUBE-FW only then). */
  readonly loadBalancerSourceRanges?: readonly string[];
  /** spec.externalIPs. Only the IPVS renderer writes them (KUBE-EXTERNAL-IP sets, virtual servers, kube-ipvs0). */
  readonly externalIPs?: readonly string[];
  readonly endpoints: readonly EndpointModel[];
  /** Only what the Kubernetes API shows (kube-proxy ignores these): the Service's annotations and its LB status. */
  readonly annotations?: Readonly<Record<string, string>>;
  readonly loadBalancerHostname?: string;
  readonly ipMode?: 'VIP' | 'Proxy';
}

export interface ProxyModel {
  readonly services: readonly ServiceModel[];
}

// --- names and hashes -------------------------------------------------------

const BASE32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 with padding, as Go's base32.StdEncoding. */
function base32(bytes: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = (value << 8) | b;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(value << (5 - bits)) & 31];
  while (out.length % 8 !== 0) out += '=';
  return out;
}

function sha256Base32(text: string): string {
  return base32(createHash('sha256').update(text).digest());
}

/** proxy.ServicePortName.String(): `ns/name:port`, or `ns/name` for an unnamed port. */
export function servicePortName(svc: Pick<ServiceModel, 'namespace' | 'name' | 'portName'>): string {
  return `${svc.namespace}/${svc.name}${svc.portName ? `:${svc.portName}` : ''}`;
}

/** iptables portProtoHash: first 16 chars of base32(sha256(servicePortName + protocol)). */
export function portProtoHash(svc: Pick<ServiceModel, 'namespace' | 'name' | 'portName' | 'protocol'>): string {
  return sha256Base32(servicePortName(svc) + svc.protocol).slice(0, 16);
}

/** The per-service iptables chains (KUBE-SVC/SVL/EXT/FW share one hash). */
export function iptablesServiceChains(svc: Pick<ServiceModel, 'namespace' | 'name' | 'portName' | 'protocol'>): {
  readonly svc: string;
  readonly svl: string;
  readonly ext: string;
  readonly fw: string;
} {
  const h = portProtoHash(svc);
  return { svc: `KUBE-SVC-${h}`, svl: `KUBE-SVL-${h}`, ext: `KUBE-EXT-${h}`, fw: `KUBE-FW-${h}` };
}

/** servicePortEndpointChainName: the hash also covers the endpoint's `ip:port`. */
export function iptablesEndpointChain(svc: Pick<ServiceModel, 'namespace' | 'name' | 'portName' | 'protocol'>, ep: Pick<EndpointModel, 'ip' | 'port'>): string {
  return `KUBE-SEP-${sha256Base32(servicePortName(svc) + svc.protocol + `${ep.ip}:${ep.port}`).slice(0, 16)}`;
}

// nftables hashAndTruncate: 8 base32 chars of the name's own hash, a dash, the name.
function hashAndTruncate(name: string): string {
  const full = `${sha256Base32(name).slice(0, 8)}-${name}`;
  const max = 256 - 16; // knftables.NameLengthMax - chainNamePrefixLengthMax
  return full.length > max ? `${full.slice(0, max - 3)}...` : full;
}

/** The per-service nftables chains: `service-HASH-ns/name/proto/port` and friends. */
export function nftServiceChains(svc: Pick<ServiceModel, 'namespace' | 'name' | 'portName' | 'protocol'>): {
  readonly service: string;
  readonly local: string;
  readonly external: string;
  readonly firewall: string;
} {
  const base = hashAndTruncate(`${svc.namespace}/${svc.name}/${svc.protocol}/${svc.portName}`);
  return { service: `service-${base}`, local: `local-${base}`, external: `external-${base}`, firewall: `firewall-${base}` };
}

export function nftEndpointChain(svc: Pick<ServiceModel, 'namespace' | 'name' | 'portName' | 'protocol'>, ep: Pick<EndpointModel, 'ip' | 'port'>): string {
  return `endpoint-${hashAndTruncate(`${svc.namespace}/${svc.name}/${svc.protocol}/${svc.portName}__${ep.ip}/${ep.port}`)}`;
}

/** computeProbability: 1/n with ten decimals (`%0.10f`). */
export function probability(n: number): string {
  return (1 / n).toFixed(10);
}

// --- endpoint selection (pkg/proxy/topology.go CategorizeEndpoints) --------

interface Categorized {
  readonly clusterEndpoints: readonly EndpointModel[];
  readonly localEndpoints: readonly EndpointModel[];
  readonly allReachable: readonly EndpointModel[];
  readonly hasEndpoints: boolean;
}

const isReady = (ep: EndpointModel): boolean => ep.ready && ep.terminating !== true;
const isServingTerminating = (ep: EndpointModel): boolean => ep.terminating === true;
const epKey = (ep: Pick<EndpointModel, 'ip' | 'port'>): string => `${ep.ip}:${ep.port}`;

function externallyAccessible(svc: ServiceModel): boolean {
  return svc.nodePort !== undefined || svc.loadBalancerIP !== undefined;
}

function externalPolicyLocal(svc: ServiceModel): boolean {
  return externallyAccessible(svc) && svc.externalTrafficPolicy === 'Local';
}

function categorize(svc: ServiceModel, nodeName: string): Categorized {
  // Endpoints in a stable order (kube-proxy keeps them sorted by ip:port).
  const eps = [...svc.endpoints].sort((a, b) => (epKey(a) < epKey(b) ? -1 : epKey(a) > epKey(b) ? 1 : 0));
  // internalTrafficPolicy is not modelled (always Cluster), so cluster endpoints are always used.
  let clusterEndpoints = eps.filter(isReady);
  if (clusterEndpoints.length === 0) clusterEndpoints = eps.filter(isServingTerminating);
  let hasEndpoints = clusterEndpoints.length > 0;
  if (!externalPolicyLocal(svc)) return { clusterEndpoints, localEndpoints: [], allReachable: clusterEndpoints, hasEndpoints };
  const local = eps.filter((ep) => ep.nodeName === nodeName);
  if (eps.some((ep) => isReady(ep) || isServingTerminating(ep))) hasEndpoints = true;
  const localReady = local.filter(isReady);
  const localEndpoints = localReady.length > 0 ? localReady : local.filter(isServingTerminating);
  const merged = new Map<string, EndpointModel>();
  for (const ep of [...clusterEndpoints, ...localEndpoints]) merged.set(epKey(ep), ep);
  return { clusterEndpoints, localEndpoints, allReachable: [...merged.values()], hasEndpoints };
}

// --- iptables ---------------------------------------------------------------

export interface IptablesRenderOptions {
  /** kube-proxy --cluster-cidr (detect-local-mode ClusterCIDR). Unset, as on EKS, means no local-traffic detector. */
  readonly clusterCidr?: string;
  readonly masqueradeAll?: boolean;
  /** iptables.localhostNodePorts, true by default in kube-proxy. */
  readonly localhostNodePorts?: boolean;
  /**
   * The node's current `iptables-save` output. Stale KUBE-SVC/SEP/… chains in
   * it are flushed and deleted, and the jump rules it already has are not
   * added again. Unset means a fresh node.
   */
  readonly existingRules?: string;
}

const MASQ_MARK = '0x4000';
const q = (s: string): string => `"${s}"`;

interface JumpChain {
  readonly table: 'filter' | 'nat';
  readonly dst: string;
  readonly src: string;
  readonly comment: string;
  readonly extra: readonly string[];
}

// iptablesJumpChains + iptablesKubeletJumpChains: ensured with `iptables -I`
// (EnsureRule(Prepend)), never part of the flushed chains.
const JUMP_CHAINS: readonly JumpChain[] = [
  { table: 'filter', dst: 'KUBE-EXTERNAL-SERVICES', src: 'INPUT', comment: 'kubernetes externally-visible service portals', extra: ['-m', 'conntrack', '--ctstate', 'NEW'] },
  { table: 'filter', dst: 'KUBE-EXTERNAL-SERVICES', src: 'FORWARD', comment: 'kubernetes externally-visible service portals', extra: ['-m', 'conntrack', '--ctstate', 'NEW'] },
  { table: 'filter', dst: 'KUBE-NODEPORTS', src: 'INPUT', comment: 'kubernetes health check service ports', extra: [] },
  { table: 'filter', dst: 'KUBE-SERVICES', src: 'FORWARD', comment: 'kubernetes service portals', extra: ['-m', 'conntrack', '--ctstate', 'NEW'] },
  { table: 'filter', dst: 'KUBE-SERVICES', src: 'OUTPUT', comment: 'kubernetes service portals', extra: ['-m', 'conntrack', '--ctstate', 'NEW'] },
  { table: 'filter', dst: 'KUBE-FORWARD', src: 'FORWARD', comment: 'kubernetes forwarding rules', extra: [] },
  { table: 'filter', dst: 'KUBE-PROXY-FIREWALL', src: 'INPUT', comment: 'kubernetes load balancer firewall', extra: ['-m', 'conntrack', '--ctstate', 'NEW'] },
  { table: 'filter', dst: 'KUBE-PROXY-FIREWALL', src: 'OUTPUT', comment: 'kubernetes load balancer firewall', extra: ['-m', 'conntrack', '--ctstate', 'NEW'] },
  { table: 'filter', dst: 'KUBE-PROXY-FIREWALL', src: 'FORWARD', comment: 'kubernetes load balancer firewall', extra: ['-m', 'conntrack', '--ctstate', 'NEW'] },
  { table: 'nat', dst: 'KUBE-SERVICES', src: 'OUTPUT', comment: 'kubernetes service portals', extra: [] },
  { table: 'nat', dst: 'KUBE-SERVICES', src: 'PREROUTING', comment: 'kubernetes service portals', extra: [] },
  { table: 'nat', dst: 'KUBE-POSTROUTING', src: 'POSTROUTING', comment: 'kubernetes postrouting rules', extra: [] },
  { table: 'filter', dst: 'KUBE-FIREWALL', src: 'INPUT', comment: '', extra: [] },
  { table: 'filter', dst: 'KUBE-FIREWALL', src: 'OUTPUT', comment: '', extra: [] },
];

const SERVICE_CHAIN_PREFIXES = ['KUBE-SVC-', 'KUBE-SVL-', 'KUBE-SEP-', 'KUBE-FW-', 'KUBE-EXT-'];

interface SavedTables {
  readonly chains: ReadonlyMap<string, ReadonlySet<string>>;
  readonly rules: ReadonlyMap<string, readonly string[]>;
}

function parseSaved(text: string): SavedTables {
  const chains = new Map<string, Set<string>>();
  const rules = new Map<string, string[]>();
  let table = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('*')) {
      table = line.slice(1);
      chains.set(table, chains.get(table) ?? new Set());
      rules.set(table, rules.get(table) ?? []);
    } else if (line.startsWith(':')) chains.get(table)?.add(line.slice(1).split(' ')[0] ?? '');
    else if (line.startsWith('-A ')) rules.get(table)?.push(line.replace(/^\[\d+:\d+\] /, ''));
  }
  return { chains, rules };
}

function hasJump(saved: SavedTables, j: JumpChain): boolean {
  return (saved.rules.get(j.table) ?? []).some(
    (r) => r.startsWith(`-A ${j.src} `) && r.endsWith(`-j ${j.dst}`) && (j.comment === '' || r.includes(j.comment)),
  );
}

/**
 * kube-proxy's iptables-restore input for the filter and nat tables, to be
 * applied with `iptables-restore --noflush`: every KUBE-* chain it declares is
 * flushed and rewritten, stale service chains are declared and `-X`ed, and the
 * other chains of the tables are left alone.
 */
export function renderIptablesRestore(model: ProxyModel, nodeName: string, nodeIp: string, opts: IptablesRenderOptions = {}): string {
  const localhostNodePorts = opts.localhostNodePorts ?? true;
  const saved = parseSaved(opts.existingRules ?? '');
  const filterChains: string[] = [];
  const filterRules: string[] = [];
  const natChains: string[] = [];
  const natRules: string[] = [];
  const chainLine = (c: string): string => `:${c} - [0:0]`;
  const ifLocal = opts.clusterCidr ? `-s ${opts.clusterCidr}` : undefined;
  const ifNotLocal = opts.clusterCidr ? `! -s ${opts.clusterCidr}` : undefined;

  for (const c of ['KUBE-SERVICES', 'KUBE-EXTERNAL-SERVICES', 'KUBE-FORWARD', 'KUBE-NODEPORTS', 'KUBE-PROXY-FIREWALL']) filterChains.push(chainLine(c));
  for (const c of ['KUBE-SERVICES', 'KUBE-NODEPORTS', 'KUBE-POSTROUTING', 'KUBE-MARK-MASQ']) natChains.push(chainLine(c));

  // Masquerade only what KUBE-MARK-MASQ marked, and clear the mark so a packet
  // that re-traverses the stack is not masqueraded twice.
  natRules.push(`-A KUBE-POSTROUTING -m mark ! --mark ${MASQ_MARK}/${MASQ_MARK} -j RETURN`);
  natRules.push(`-A KUBE-POSTROUTING -j MARK --xor-mark ${MASQ_MARK}`);
  natRules.push(`-A KUBE-POSTROUTING -m comment --comment ${q('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully`);
  natRules.push(`-A KUBE-MARK-MASQ -j MARK --or-mark ${MASQ_MARK}`);

  if (localhostNodePorts) {
    // route_localnet=1 opens 127/8 NodePorts to the world; kubelet and kube-proxy close it here (issue 90259).
    filterChains.push(chainLine('KUBE-FIREWALL'));
    filterRules.push(`-A KUBE-FIREWALL -m comment --comment ${q('block incoming localnet connections')} -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`);
  }

  const activeNatChains = new Set<string>();

  for (const svc of model.services) {
    const name = servicePortName(svc);
    const p = svc.protocol;
    const chains = iptablesServiceChains(svc);
    const { clusterEndpoints, localEndpoints, allReachable, hasEndpoints } = categorize(svc, nodeName);
    const extLocal = externalPolicyLocal(svc);
    const usesClusterPolicyChain = clusterEndpoints.length > 0;
    const usesLocalPolicyChain = localEndpoints.length > 0 && extLocal;
    const hasInternalEndpoints = hasEndpoints;
    const externalPolicyChain = extLocal ? chains.svl : chains.svc;
    const hasExternalEndpoints = hasEndpoints && (!extLocal || localEndpoints.length > 0);
    const usesExternalTrafficChain = hasEndpoints && externallyAccessible(svc);
    const sourceRanges = svc.loadBalancerSourceRanges ?? [];
    const usesFwChain = hasEndpoints && svc.loadBalancerIP !== undefined && sourceRanges.length > 0;
    const lbTrafficChain = usesFwChain ? chains.fw : chains.ext;
    const internalFilter = hasEndpoints ? undefined : { target: 'REJECT', comment: q(`${name} has no endpoints`) };
    const externalFilter = !hasEndpoints
      ? { target: 'REJECT', comment: q(`${name} has no endpoints`) }
      : !hasExternalEndpoints
        ? { target: 'DROP', comment: q(`${name} has no local endpoints`) }
        : undefined;
    const match = `-m ${p} -p ${p}`;

    // Capture the clusterIP.
    if (hasInternalEndpoints) {
      natRules.push(`-A KUBE-SERVICES -m comment --comment ${q(`${name} cluster IP`)} ${match} -d ${svc.clusterIP} --dport ${svc.port} -j ${chains.svc}`);
    } else if (internalFilter) {
      filterRules.push(`-A KUBE-SERVICES -m comment --comment ${internalFilter.comment} ${match} -d ${svc.clusterIP} --dport ${svc.port} -j ${internalFilter.target}`);
    }

    // Capture load-balancer ingress.
    if (svc.loadBalancerIP !== undefined) {
      if (hasEndpoints) {
        natRules.push(`-A KUBE-SERVICES -m comment --comment ${q(`${name} loadbalancer IP`)} ${match} -d ${svc.loadBalancerIP} --dport ${svc.port} -j ${lbTrafficChain}`);
      }
      if (usesFwChain) {
        filterRules.push(`-A KUBE-PROXY-FIREWALL -m comment --comment ${q(`${name} traffic not accepted by ${chains.fw}`)} ${match} -d ${svc.loadBalancerIP} --dport ${svc.port} -j DROP`);
      }
      if (externalFilter) {
        filterRules.push(`-A KUBE-EXTERNAL-SERVICES -m comment --comment ${externalFilter.comment} ${match} -d ${svc.loadBalancerIP} --dport ${svc.port} -j ${externalFilter.target}`);
      }
    }

    // Capture nodeports.
    if (svc.nodePort !== undefined) {
      if (hasEndpoints) natRules.push(`-A KUBE-NODEPORTS -m comment --comment ${name} ${match} --dport ${svc.nodePort} -j ${chains.ext}`);
      if (externalFilter) {
        filterRules.push(`-A KUBE-EXTERNAL-SERVICES -m comment --comment ${externalFilter.comment} -m addrtype --dst-type LOCAL ${match} --dport ${svc.nodePort} -j ${externalFilter.target}`);
      }
    }

    // kube-proxy's own health-check server answers on this port; the rule only opens it.
    if (svc.healthCheckNodePort !== undefined) {
      filterRules.push(`-A KUBE-NODEPORTS -m comment --comment ${q(`${name} health check node port`)} -m tcp -p tcp --dport ${svc.healthCheckNodePort} -j ACCEPT`);
    }

    // Internal traffic handling: masquerade off-cluster sources reaching the ClusterIP.
    if (hasInternalEndpoints) {
      const args = `-m comment --comment ${q(`${name} cluster IP`)} ${match} -d ${svc.clusterIP} --dport ${svc.port}`;
      if (opts.masqueradeAll) natRules.push(`-A ${chains.svc} ${args} -j KUBE-MARK-MASQ`);
      else if (ifNotLocal) natRules.push(`-A ${chains.svc} ${args} ${ifNotLocal} -j KUBE-MARK-MASQ`);
    }

    // External traffic handling (NodePort, LoadBalancer IP).
    if (usesExternalTrafficChain) {
      natChains.push(chainLine(chains.ext));
      activeNatChains.add(chains.ext);
      if (!extLocal) {
        // Cluster policy may cross nodes, so the source is masqueraded: this is
        // why a hairpinned pod gets its SYN-ACK from node:NodePort (seed 000).
        natRules.push(`-A ${chains.ext} -m comment --comment ${q(`masquerade traffic for ${name} external destinations`)} -j KUBE-MARK-MASQ`);
      } else {
        if (ifLocal) natRules.push(`-A ${chains.ext} -m comment --comment ${q(`pod traffic for ${name} external destinations`)} ${ifLocal} -j ${chains.svc}`);
        natRules.push(`-A ${chains.ext} -m comment --comment ${q(`masquerade LOCAL traffic for ${name} external destinations`)} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ`);
        natRules.push(`-A ${chains.ext} -m comment --comment ${q(`route LOCAL traffic for ${name} external destinations`)} -m addrtype --src-type LOCAL -j ${chains.svc}`);
      }
      if (hasExternalEndpoints) natRules.push(`-A ${chains.ext} -j ${externalPolicyChain}`);
    }

    if (usesFwChain && svc.loadBalancerIP !== undefined) {
      natChains.push(chainLine(chains.fw));
      activeNatChains.add(chains.fw);
      const args = `-A ${chains.fw} -m comment --comment ${q(`${name} loadbalancer IP`)}`;
      let allowFromNode = false;
      for (const cidr of sourceRanges) {
        natRules.push(`${args} -s ${cidr} -j ${chains.ext}`);
        if (cidrContains(cidr, nodeIp)) allowFromNode = true;
      }
      if (allowFromNode) natRules.push(`${args} -s ${svc.loadBalancerIP} -j ${chains.ext}`);
      natRules.push(`-A ${chains.fw} -m comment --comment ${q(`other traffic to ${name} will be dropped by KUBE-PROXY-FIREWALL`)}`);
    }

    const writeServiceToEndpoints = (chain: string, eps: readonly EndpointModel[]): void => {
      eps.forEach((ep, i) => {
        const stat = i < eps.length - 1 ? ` -m statistic --mode random --probability ${probability(eps.length - i)}` : '';
        natRules.push(`-A ${chain} -m comment --comment ${q(`${name} -> ${epKey(ep)}`)}${stat} -j ${iptablesEndpointChain(svc, ep)}`);
      });
    };
    if (usesClusterPolicyChain) {
      natChains.push(chainLine(chains.svc));
      activeNatChains.add(chains.svc);
      writeServiceToEndpoints(chains.svc, clusterEndpoints);
    }
    if (usesLocalPolicyChain) {
      natChains.push(chainLine(chains.svl));
      activeNatChains.add(chains.svl);
      writeServiceToEndpoints(chains.svl, localEndpoints);
    }

    for (const ep of allReachable) {
      const sep = iptablesEndpointChain(svc, ep);
      natChains.push(chainLine(sep));
      activeNatChains.add(sep);
      // Traffic that loops back to the pod that sent it must be masqueraded, or the pod would answer itself.
      natRules.push(`-A ${sep} -m comment --comment ${name} -s ${ep.ip} -j KUBE-MARK-MASQ`);
      natRules.push(`-A ${sep} -m comment --comment ${name} ${match} -j DNAT --to-destination ${epKey(ep)}`);
    }
  }

  // Delete chains no longer in use: declaring them flushes them, then -X.
  for (const chain of saved.chains.get('nat') ?? []) {
    if (activeNatChains.has(chain) || !SERVICE_CHAIN_PREFIXES.some((pfx) => chain.startsWith(pfx))) continue;
    natChains.push(chainLine(chain));
    natRules.push(`-X ${chain}`);
  }

  // Tail-call to the nodeports chain: must stay the last rule of KUBE-SERVICES.
  natRules.push(
    `-A KUBE-SERVICES -m comment --comment ${q('kubernetes service nodeports; NOTE: this must be the last rule in this chain')} -m addrtype --dst-type LOCAL${localhostNodePorts ? '' : ' ! -d 127.0.0.0/8'} -j KUBE-NODEPORTS`,
  );

  filterRules.push('-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP');
  filterRules.push(`-A KUBE-FORWARD -m comment --comment ${q('kubernetes forwarding rules')} -m mark --mark ${MASQ_MARK}/${MASQ_MARK} -j ACCEPT`);
  filterRules.push(`-A KUBE-FORWARD -m comment --comment ${q('kubernetes forwarding conntrack rule')} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`);

  const jumps = (table: 'filter' | 'nat'): string[] =>
    JUMP_CHAINS.filter((j) => j.table === table && (localhostNodePorts || j.dst !== 'KUBE-FIREWALL') && !hasJump(saved, j)).map(
      (j) => `-I ${j.src} ${[...j.extra, ...(j.comment ? ['-m', 'comment', '--comment', q(j.comment)] : [])].join(' ')}${j.extra.length || j.comment ? ' ' : ''}-j ${j.dst}`,
    );

  return [
    '*filter', ...filterChains, ...jumps('filter'), ...filterRules, 'COMMIT',
    '*nat', ...natChains, ...jumps('nat'), ...natRules, 'COMMIT', '',
  ].join('\n');
}

function ipToInt(ip: string): number | undefined {
  const parts = ip.split('.').map(Number);
  if (parts.length !== 4 || parts.some((n) => !Number.isInteger(n) || n < 0 || n > 255)) return undefined;
  return parts.reduce((acc, n) => acc * 256 + n, 0);
}

function cidrContains(cidr: string, ip: string): boolean {
  const [base, bitsText] = cidr.trim().split('/');
  const b = ipToInt(base ?? '');
  const a = ipToInt(ip);
  const bits = Number(bitsText ?? '32');
  if (b === undefined || a === undefined || !(bits >= 0 && bits <= 32)) return false;
  const size = 2 ** (32 - bits);
  return Math.floor(a / size) === Math.floor(b / size);
}

// --- nftables ---------------------------------------------------------------

export interface NftRenderOptions {
  readonly clusterCidr?: string;
  readonly masqueradeAll?: boolean;
  /** The service CIDR: traffic to unallocated ClusterIPs in it is dropped. */
  readonly serviceCidr?: string;
  /** --nodeport-addresses; nftables mode defaults to the node's primary IP. */
  readonly nodePortAddresses?: readonly string[];
  /** Service or endpoint chains kube-proxy flushed but has not deleted yet: written as empty chains. */
  readonly staleChains?: readonly string[];
}

/**
 * kube-proxy's nftables-mode ruleset for table `ip kube-proxy`, as `nft -f`
 * input (the shape of its transaction: chains, then rules, then map elements,
 * so every `goto` names a chain that exists).
 */
export function renderNftRuleset(model: ProxyModel, nodeName: string, nodeIp: string, opts: NftRenderOptions = {}): string {
  const T = 'ip kube-proxy';
  const chains: string[] = [];
  const rules: string[] = [];
  const elements: string[] = [];
  const nodePortAddresses = opts.nodePortAddresses ?? [nodeIp];

  const head = [
    `add table ${T} { comment "rules for kube-proxy" ; }`,
    `add set ${T} cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }`,
    `add set ${T} nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }`,
    `add map ${T} firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }`,
    `add map ${T} no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }`,
    `add map ${T} no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }`,
    `add map ${T} service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }`,
    `add map ${T} service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }`,
    `add chain ${T} cluster-ips-check`,
    // Filtering must see pre-DNAT destinations, so those chains run before dstnat (-100).
    `add chain ${T} filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }`,
    `add chain ${T} filter-output-pre-dnat { type filter hook output priority -110 ; }`,
    `add chain ${T} filter-forward { type filter hook forward priority 0 ; }`,
    `add chain ${T} filter-input { type filter hook input priority 0 ; }`,
    `add chain ${T} filter-output { type filter hook output priority 0 ; }`,
    `add chain ${T} firewall-check`,
    `add chain ${T} mark-for-masquerade`,
    `add chain ${T} masquerading`,
    `add chain ${T} nat-output { type nat hook output priority -100 ; }`,
    `add chain ${T} nat-postrouting { type nat hook postrouting priority 100 ; }`,
    `add chain ${T} nat-prerouting { type nat hook prerouting priority -100 ; }`,
    `add chain ${T} nodeport-endpoints-check`,
    `add chain ${T} reject-chain { comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }`,
    `add chain ${T} services`,
    `add chain ${T} service-endpoints-check`,
    `add rule ${T} cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"`,
    ...(opts.serviceCidr ? [`add rule ${T} cluster-ips-check ip daddr { ${opts.serviceCidr} } drop comment "Drop traffic to unallocated ClusterIPs"`] : []),
    `add rule ${T} filter-prerouting-pre-dnat ct state new jump firewall-check`,
    `add rule ${T} filter-forward ct state new jump service-endpoints-check`,
    `add rule ${T} filter-forward ct state new jump cluster-ips-check`,
    `add rule ${T} filter-input ct state new jump nodeport-endpoints-check`,
    `add rule ${T} filter-input ct state new jump service-endpoints-check`,
    `add rule ${T} filter-output ct state new jump service-endpoints-check`,
    `add rule ${T} filter-output-pre-dnat ct state new jump firewall-check`,
    `add rule ${T} filter-output ct state new jump cluster-ips-check`,
    `add rule ${T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips`,
    `add rule ${T} mark-for-masquerade mark set mark or ${MASQ_MARK}`,
    `add rule ${T} masquerading mark and ${MASQ_MARK} == 0 return`,
    `add rule ${T} masquerading mark set mark xor ${MASQ_MARK}`,
    `add rule ${T} masquerading masquerade fully-random`,
    `add rule ${T} nat-output jump services`,
    `add rule ${T} nat-postrouting jump masquerading`,
    `add rule ${T} nat-prerouting jump services`,
    `add rule ${T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports`,
    `add rule ${T} reject-chain reject`,
    `add rule ${T} services ip daddr . meta l4proto . th dport vmap @service-ips`,
    `add rule ${T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports`,
    ...nodePortAddresses.map((ip) => `add element ${T} nodeport-ips { ${ip} }`),
    `add rule ${T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services`,
  ];

  const ifLocal = opts.clusterCidr ? `ip saddr ${opts.clusterCidr}` : undefined;
  const ifNotLocal = opts.clusterCidr ? `ip saddr != ${opts.clusterCidr}` : undefined;

  for (const svc of model.services) {
    const name = servicePortName(svc);
    const p = svc.protocol;
    const c = nftServiceChains(svc);
    const { clusterEndpoints, localEndpoints, allReachable, hasEndpoints } = categorize(svc, nodeName);
    const extLocal = externalPolicyLocal(svc);
    const usesClusterPolicyChain = clusterEndpoints.length > 0;
    const usesLocalPolicyChain = localEndpoints.length > 0 && extLocal;
    const hasExternalEndpoints = hasEndpoints && (!extLocal || localEndpoints.length > 0);
    const externalPolicyChain = extLocal ? c.local : c.service;
    const usesExternalTrafficChain = hasEndpoints && externallyAccessible(svc);
    const sourceRanges = svc.loadBalancerSourceRanges ?? [];
    const usesFwChain = svc.loadBalancerIP !== undefined && sourceRanges.length > 0;
    const internalVerdict = hasEndpoints ? undefined : 'goto reject-chain';
    const externalVerdict = !hasEndpoints ? 'goto reject-chain' : !hasExternalEndpoints ? 'drop' : undefined;

    for (const ep of allReachable) chains.push(`add chain ${T} ${nftEndpointChain(svc, ep)}`);
    if (usesClusterPolicyChain) chains.push(`add chain ${T} ${c.service}`);
    if (usesLocalPolicyChain) chains.push(`add chain ${T} ${c.local}`);
    if (usesExternalTrafficChain) chains.push(`add chain ${T} ${c.external}`);
    if (usesFwChain) chains.push(`add chain ${T} ${c.firewall}`);

    elements.push(`add element ${T} cluster-ips { ${svc.clusterIP} }`);
    if (hasEndpoints) elements.push(`add element ${T} service-ips { ${svc.clusterIP} . ${p} . ${svc.port} : goto ${c.service} }`);
    else if (internalVerdict) elements.push(`add element ${T} no-endpoint-services { ${svc.clusterIP} . ${p} . ${svc.port} comment ${q(name)} : ${internalVerdict} }`);
    if (svc.loadBalancerIP !== undefined) {
      if (hasEndpoints) elements.push(`add element ${T} service-ips { ${svc.loadBalancerIP} . ${p} . ${svc.port} : goto ${c.external} }`);
      if (usesFwChain) elements.push(`add element ${T} firewall-ips { ${svc.loadBalancerIP} . ${p} . ${svc.port} : goto ${c.firewall} }`);
      if (externalVerdict) elements.push(`add element ${T} no-endpoint-services { ${svc.loadBalancerIP} . ${p} . ${svc.port} comment ${q(name)} : ${externalVerdict} }`);
    }
    if (svc.nodePort !== undefined) {
      if (hasEndpoints) elements.push(`add element ${T} service-nodeports { ${p} . ${svc.nodePort} : goto ${c.external} }`);
      if (externalVerdict) elements.push(`add element ${T} no-endpoint-nodeports { ${p} . ${svc.nodePort} comment ${q(name)} : ${externalVerdict} }`);
    }

    if (hasEndpoints) {
      if (opts.masqueradeAll) rules.push(`add rule ${T} ${c.service} ip daddr ${svc.clusterIP} jump mark-for-masquerade`);
      else if (ifNotLocal) rules.push(`add rule ${T} ${c.service} ip daddr ${svc.clusterIP} ${ifNotLocal} jump mark-for-masquerade`);
    }
    if (usesExternalTrafficChain) {
      if (!extLocal) rules.push(`add rule ${T} ${c.external} jump mark-for-masquerade`);
      else {
        if (ifLocal) rules.push(`add rule ${T} ${c.external} ${ifLocal} goto ${c.service} comment "short-circuit pod traffic"`);
        rules.push(`add rule ${T} ${c.external} fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"`);
        rules.push(`add rule ${T} ${c.external} fib saddr type local goto ${c.service} comment "short-circuit local traffic"`);
      }
      if (hasExternalEndpoints) rules.push(`add rule ${T} ${c.external} goto ${externalPolicyChain}`);
    }
    if (usesFwChain && svc.loadBalancerIP !== undefined) {
      const sources = [...sourceRanges];
      if (sourceRanges.some((cidr) => cidrContains(cidr, nodeIp))) sources.push(svc.loadBalancerIP);
      rules.push(`add rule ${T} ${c.firewall} ip saddr != { ${sources.join(', ')} } drop`);
    }
    const writeServiceToEndpoints = (chain: string, eps: readonly EndpointModel[]): void => {
      const vmap = eps.map((ep, i) => `${i} : goto ${nftEndpointChain(svc, ep)}`).join(' , ');
      rules.push(`add rule ${T} ${chain} numgen random mod ${eps.length} vmap { ${vmap} }`);
    };
    if (usesClusterPolicyChain) writeServiceToEndpoints(c.service, clusterEndpoints);
    if (usesLocalPolicyChain) writeServiceToEndpoints(c.local, localEndpoints);
    for (const ep of allReachable) {
      const chain = nftEndpointChain(svc, ep);
      rules.push(`add rule ${T} ${chain} ip saddr ${ep.ip} jump mark-for-masquerade`);
      rules.push(`add rule ${T} ${chain} meta l4proto ${p} dnat to ${epKey(ep)}`);
    }
  }

  for (const chain of opts.staleChains ?? []) chains.push(`add chain ${T} ${chain}`);
  return [...head, ...chains, ...rules, ...elements, ''].join('\n');
}

// --- IPVS mode ---------------------------------------------------------------
//
// kube-proxy's IPVS proxier keeps Service addresses in ipsets, programs IPVS
// virtual servers, binds every VIP on the dummy device kube-ipvs0, and writes a
// small fixed set of iptables rules that match the sets. This kernel has no
// IPVS: the sets, the rules and the kube-ipvs0 addresses load for real, and
// the virtual servers are rendered as the `ipvsadm -Ln` text they would show.

export type IpsetType = 'hash:ip,port' | 'hash:ip,port,ip' | 'hash:ip,port,net' | 'bitmap:port' | 'hash:ip';

export interface IpsetSpec {
  readonly name: string;
  readonly type: IpsetType;
  /**
   * The comment kube-proxy puts on the iptables rule that matches the set
   * (`-m comment --comment "…"`). `ipset create` itself gets none: ipset.go
   * createSet passes only family, hashsize, maxelem (or range).
   */
  readonly comment: string;
}

/** ipsetInfo in proxier.go, in its order, with the names and comments of ipset.go. */
export const IPVS_IPSETS: readonly IpsetSpec[] = [
  { name: 'KUBE-LOOP-BACK', type: 'hash:ip,port,ip', comment: 'Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose' },
  { name: 'KUBE-CLUSTER-IP', type: 'hash:ip,port', comment: 'Kubernetes service cluster ip + port for masquerade purpose' },
  { name: 'KUBE-EXTERNAL-IP', type: 'hash:ip,port', comment: 'Kubernetes service external ip + port for masquerade and filter purpose' },
  { name: 'KUBE-EXTERNAL-IP-LOCAL', type: 'hash:ip,port', comment: 'Kubernetes service external ip + port with externalTrafficPolicy=local' },
  { name: 'KUBE-LOAD-BALANCER', type: 'hash:ip,port', comment: 'Kubernetes service lb portal' },
  { name: 'KUBE-LOAD-BALANCER-FW', type: 'hash:ip,port', comment: 'Kubernetes service load balancer ip + port for load balancer with sourceRange' },
  { name: 'KUBE-LOAD-BALANCER-LOCAL', type: 'hash:ip,port', comment: 'Kubernetes service load balancer ip + port with externalTrafficPolicy=local' },
  { name: 'KUBE-LOAD-BALANCER-SOURCE-IP', type: 'hash:ip,port,ip', comment: 'Kubernetes service load balancer ip + port + source IP for packet filter purpose' },
  { name: 'KUBE-LOAD-BALANCER-SOURCE-CIDR', type: 'hash:ip,port,net', comment: 'Kubernetes service load balancer ip + port + source cidr for packet filter purpose' },
  { name: 'KUBE-NODE-PORT-TCP', type: 'bitmap:port', comment: 'Kubernetes nodeport TCP port for masquerade purpose' },
  { name: 'KUBE-NODE-PORT-LOCAL-TCP', type: 'bitmap:port', comment: 'Kubernetes nodeport TCP port with externalTrafficPolicy=local' },
  { name: 'KUBE-NODE-PORT-UDP', type: 'bitmap:port', comment: 'Kubernetes nodeport UDP port for masquerade purpose' },
  { name: 'KUBE-NODE-PORT-LOCAL-UDP', type: 'bitmap:port', comment: 'Kubernetes nodeport UDP port with externalTrafficPolicy=local' },
  { name: 'KUBE-NODE-PORT-SCTP-HASH', type: 'hash:ip,port', comment: "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'" },
  { name: 'KUBE-NODE-PORT-LOCAL-SCTP-HASH', type: 'hash:ip,port', comment: "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'" },
  { name: 'KUBE-HEALTH-CHECK-NODE-PORT', type: 'bitmap:port', comment: 'Kubernetes health check node port' },
  { name: 'KUBE-IPVS-IPS', type: 'hash:ip', comment: 'Addresses on the ipvs interface' },
];

const IPSET_BY_NAME = new Map(IPVS_IPSETS.map((s) => [s.name, s]));

function ipsetSpec(name: string): IpsetSpec {
  const s = IPSET_BY_NAME.get(name);
  if (!s) throw new Error(`no kube-proxy ipset ${name}`);
  return s;
}

/** `ipset create` as ipset.go createSet issues it (hashsize 1024, maxelem 65536, bitmap range 0-65535). */
export function ipsetCreateLine(spec: IpsetSpec): string {
  return spec.type === 'bitmap:port' ? `create ${spec.name} ${spec.type} range 0-65535` : `create ${spec.name} ${spec.type} family inet hashsize 1024 maxelem 65536`;
}

export interface IpvsRealServer {
  readonly address: string;
  readonly port: number;
  /** 1, or 0 for a terminating endpoint kube-proxy is draining (graceful termination). */
  readonly weight: number;
  readonly activeConn: number;
  readonly inActConn: number;
}

export interface IpvsVirtualServer {
  readonly protocol: 'TCP' | 'UDP';
  readonly address: string;
  readonly port: number;
  readonly scheduler: string;
  readonly kind: 'cluster' | 'external' | 'loadbalancer' | 'nodeport';
  /** kube-proxy's service port name (`ns/name:port`). */
  readonly service: string;
  /** Sorted as ipvsadm prints them. */
  readonly realServers: readonly IpvsRealServer[];
}

/** What one sync of kube-proxy's IPVS proxier leaves on a node. */
export interface IpvsState {
  /** Every set of IPVS_IPSETS (kube-proxy creates them all), with its members sorted. */
  readonly ipsets: ReadonlyMap<string, readonly string[]>;
  /** The addresses on kube-ipvs0: every ClusterIP, and externalIPs and LB ingress IPs that are not node addresses. */
  readonly boundAddresses: readonly string[];
  /** Sorted as `ipvsadm -Ln` prints them. */
  readonly virtualServers: readonly IpvsVirtualServer[];
  /** LB ingress ip:port whose source ranges leave out the node: KUBE-IPVS-OUT-FILTER drops them with `-m ipvs`. */
  readonly lbNoNodeAccess: readonly { readonly ip: string; readonly port: number; readonly protocol: Protocol }[];
}

export interface IpvsRenderOptions {
  /** Detect-local ClusterCIDR. Unset: kube-proxy's no-op detector (`src,dst` on KUBE-CLUSTER-IP). */
  readonly clusterCidr?: string;
  readonly masqueradeAll?: boolean;
  /** The node's addresses outside kube-ipvs0 (NodePort virtual servers, and VIPs not to bind). Default: [nodeIp]. */
  readonly nodeIps?: readonly string[];
  /** --ipvs-scheduler (default rr). */
  readonly scheduler?: string;
  /** The node's `iptables-save`: jump rules it has are not added again. */
  readonly existingRules?: string;
  /** The node's `ipset save`: members no longer wanted are deleted, present ones not re-added. */
  readonly existingIpsets?: string;
  /** ActiveConn/InActConn per real server for the ipvsadm text, keyed `TCP 10.0.0.1:80 -> 10.1.0.5:8080`. Default 0. */
  readonly connections?: Readonly<Record<string, { readonly active: number; readonly inactive: number }>>;
}

// pkg/proxy/ipvs proxier.go uses fmt.Sprintf("%#08x", 1<<14) for the mark.
const IPVS_MASQ_MARK = '0x00004000';

const isServing = (ep: EndpointModel): boolean => isReady(ep) || isServingTerminating(ep);

function ipToU32(ip: string): number {
  const n = ipToInt(ip);
  if (n === undefined) throw new Error(`not an IPv4 address: ${ip}`);
  return n;
}

// libipvs ipvs_cmp_services / ipvs_cmp_dests: int differences of the host-order values (so they wrap like C ints).
const cmpAddr = (a: string, b: string): number => (ipToU32(a) - ipToU32(b)) | 0;
const PROTO_NUMBER: Readonly<Record<'TCP' | 'UDP', number>> = { TCP: 6, UDP: 17 };

/** The state kube-proxy's IPVS proxier programs for this node (proxier.go syncProxyRules, syncEndpoint). */
export function ipvsState(model: ProxyModel, nodeName: string, nodeIp: string, opts: IpvsRenderOptions = {}): IpvsState {
  const scheduler = opts.scheduler ?? 'rr';
  const nodeIps = opts.nodeIps ?? [nodeIp];
  const members = new Map<string, Set<string>>(IPVS_IPSETS.map((s) => [s.name, new Set<string>()]));
  const add = (set: string, entry: string): void => {
    members.get(ipsetSpec(set).name)?.add(entry);
  };
  const bound = new Set<string>();
  const virtualServers: IpvsVirtualServer[] = [];
  const lbNoNodeAccess: { ip: string; port: number; protocol: Protocol }[] = [];

  for (const svc of model.services) {
    const p = svc.protocol;
    const P = p === 'tcp' ? 'TCP' : 'UDP';
    const name = servicePortName(svc);
    const externalIPs = svc.externalIPs ?? [];
    const serving = [...svc.endpoints].filter(isServing).sort((a, b) => (epKey(a) < epKey(b) ? -1 : epKey(a) > epKey(b) ? 1 : 0));
    // ExternalPolicyLocal: Local only means something for externally reachable addresses (NodePort, LB, externalIPs).
    const extLocal = svc.externalTrafficPolicy === 'Local' && (externallyAccessible(svc) || externalIPs.length > 0);
    const { clusterEndpoints } = categorize(svc, nodeName);
    const localAll = serving.filter((ep) => ep.nodeName === nodeName);
    const localReady = localAll.filter(isReady);
    const localEndpoints = localReady.length > 0 ? localReady : localAll.filter(isServingTerminating);

    // Handle traffic that loops back to the originator with SNAT: one entry per local endpoint.
    for (const ep of localAll) add('KUBE-LOOP-BACK', `${ep.ip},${p}:${ep.port},${ep.ip}`);

    // syncEndpoint: the local endpoints for external addresses of a Local service (all of them
    // when there is none here, PR 97081), the cluster endpoints otherwise. A terminating endpoint
    // left out is kept with weight 0 while kube-proxy drains it.
    const realServers = (vsKey: string, onlyLocal: boolean): IpvsRealServer[] => {
      const useLocal = onlyLocal && localEndpoints.length > 0;
      const chosen = useLocal ? localEndpoints : clusterEndpoints;
      const pool = useLocal ? localAll : serving;
      const chosenKeys = new Set(chosen.map(epKey));
      const rs = [
        ...chosen.map((ep) => ({ ep, weight: 1 })),
        ...pool.filter((ep) => ep.terminating === true && !chosenKeys.has(epKey(ep))).map((ep) => ({ ep, weight: 0 })),
      ];
      return rs
        .map(({ ep, weight }) => {
          const c = opts.connections?.[`${vsKey} -> ${epKey(ep)}`];
          return { address: ep.ip, port: ep.port, weight, activeConn: c?.active ?? 0, inActConn: c?.inactive ?? 0 };
        })
        .sort((a, b) => cmpAddr(a.address, b.address) || a.port - b.port);
    };
    const virtualServer = (kind: IpvsVirtualServer['kind'], address: string, port: number, onlyLocal: boolean): void => {
      virtualServers.push({ protocol: P, address, port, scheduler, kind, service: name, realServers: realServers(`${P} ${address}:${port}`, onlyLocal) });
    };

    // Capture the clusterIP: always bound on kube-ipvs0.
    add('KUBE-CLUSTER-IP', `${svc.clusterIP},${p}:${svc.port}`);
    virtualServer('cluster', svc.clusterIP, svc.port, false);
    bound.add(svc.clusterIP);

    // Capture externalIPs: bound unless the address is already the node's.
    for (const ip of externalIPs) {
      add(extLocal ? 'KUBE-EXTERNAL-IP-LOCAL' : 'KUBE-EXTERNAL-IP', `${ip},${p}:${svc.port}`);
      virtualServer('external', ip, svc.port, extLocal);
      if (!nodeIps.includes(ip)) bound.add(ip);
    }

    // Capture load-balancer ingress: bound on kube-ipvs0 too (PR 63066, Kubernetes 1.11+): seed 003.
    if (svc.loadBalancerIP !== undefined) {
      const ingress = svc.loadBalancerIP;
      const entry = `${ingress},${p}:${svc.port}`;
      add('KUBE-LOAD-BALANCER', entry);
      if (extLocal) add('KUBE-LOAD-BALANCER-LOCAL', entry);
      const ranges = svc.loadBalancerSourceRanges ?? [];
      if (ranges.length > 0) {
        add('KUBE-LOAD-BALANCER-FW', entry);
        let allowFromNode = false;
        for (const cidr of ranges) {
          add('KUBE-LOAD-BALANCER-SOURCE-CIDR', `${entry},${cidr}`);
          if (cidrContains(cidr, nodeIp)) allowFromNode = true;
        }
        if (allowFromNode) add('KUBE-LOAD-BALANCER-SOURCE-IP', `${entry},${ingress}`);
        else lbNoNodeAccess.push({ ip: ingress, port: svc.port, protocol: p });
      }
      virtualServer('loadbalancer', ingress, svc.port, extLocal);
      if (!nodeIps.includes(ingress)) bound.add(ingress);
    }

    // NodePorts: one virtual server per node address, never bound.
    if (svc.nodePort !== undefined) {
      add(p === 'tcp' ? 'KUBE-NODE-PORT-TCP' : 'KUBE-NODE-PORT-UDP', String(svc.nodePort));
      if (extLocal) add(p === 'tcp' ? 'KUBE-NODE-PORT-LOCAL-TCP' : 'KUBE-NODE-PORT-LOCAL-UDP', String(svc.nodePort));
      for (const ip of nodeIps) virtualServer('nodeport', ip, svc.nodePort, extLocal);
    }

    // kube-proxy's own health-check server port (NeedsHealthCheck: only a Local LoadBalancer Service has one).
    if (svc.healthCheckNodePort !== undefined && svc.externalTrafficPolicy === 'Local') add('KUBE-HEALTH-CHECK-NODE-PORT', String(svc.healthCheckNodePort));
  }
  // The KUBE-IPVS-IPS set is the addresses on kube-ipvs0.
  for (const ip of bound) add('KUBE-IPVS-IPS', ip);

  const sortMembers = (set: string, list: string[]): string[] =>
    ipsetSpec(set).type === 'bitmap:port' ? list.sort((a, b) => Number(a) - Number(b)) : list.sort();
  return {
    ipsets: new Map([...members].map(([k, v]) => [k, sortMembers(k, [...v])])),
    boundAddresses: [...bound],
    virtualServers: virtualServers.sort((a, b) => PROTO_NUMBER[a.protocol] - PROTO_NUMBER[b.protocol] || cmpAddr(a.address, b.address) || a.port - b.port),
    lbNoNodeAccess,
  };
}

/** `add NAME MEMBER` lines of an `ipset save` text, per set. */
export function parseIpsetSave(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const raw of text.split('\n')) {
    const parts = raw.trim().split(/\s+/);
    if (parts[0] === 'create' && parts[1]) out.set(parts[1], out.get(parts[1]) ?? []);
    else if (parts[0] === 'add' && parts[1] && parts[2]) out.set(parts[1], [...(out.get(parts[1]) ?? []), parts[2]]);
  }
  return out;
}

/**
 * `ipset restore -exist` input for what kube-proxy does to its sets in one
 * sync: ensure every set exists (ensureIPSet), delete members no longer
 * active, add the new ones (syncIPSetEntries).
 */
export function renderIpsetRestore(model: ProxyModel, nodeName: string, nodeIp: string, opts: IpvsRenderOptions = {}): string {
  const state = ipvsState(model, nodeName, nodeIp, opts);
  const existing = parseIpsetSave(opts.existingIpsets ?? '');
  const lines: string[] = IPVS_IPSETS.map(ipsetCreateLine);
  for (const spec of IPVS_IPSETS) {
    const want = state.ipsets.get(spec.name) ?? [];
    const have = existing.get(spec.name) ?? [];
    const wantSet = new Set(want);
    const haveSet = new Set(have);
    for (const m of [...have].sort()) if (!wantSet.has(m)) lines.push(`del ${spec.name} ${m}`);
    for (const m of want) if (!haveSet.has(m)) lines.push(`add ${spec.name} ${m}`);
  }
  return `${lines.join('\n')}\n`;
}

// iptablesJumpChain in the IPVS proxier: ensured with EnsureRule(Prepend), never flushed.
const IPVS_JUMP_CHAINS: readonly JumpChain[] = [
  { table: 'nat', src: 'OUTPUT', dst: 'KUBE-SERVICES', comment: 'kubernetes service portals', extra: [] },
  { table: 'nat', src: 'PREROUTING', dst: 'KUBE-SERVICES', comment: 'kubernetes service portals', extra: [] },
  { table: 'nat', src: 'POSTROUTING', dst: 'KUBE-POSTROUTING', comment: 'kubernetes postrouting rules', extra: [] },
  { table: 'filter', src: 'FORWARD', dst: 'KUBE-FORWARD', comment: 'kubernetes forwarding rules', extra: [] },
  { table: 'filter', src: 'INPUT', dst: 'KUBE-NODE-PORT', comment: 'kubernetes health check rules', extra: [] },
  { table: 'filter', src: 'INPUT', dst: 'KUBE-PROXY-FIREWALL', comment: 'kube-proxy firewall rules', extra: [] },
  { table: 'filter', src: 'FORWARD', dst: 'KUBE-PROXY-FIREWALL', comment: 'kube-proxy firewall rules', extra: [] },
  { table: 'filter', src: 'INPUT', dst: 'KUBE-IPVS-FILTER', comment: 'kubernetes ipvs access filter', extra: [] },
  { table: 'filter', src: 'OUTPUT', dst: 'KUBE-IPVS-OUT-FILTER', comment: 'kubernetes ipvs access filter', extra: [] },
];

// iptablesChains: every one is declared (so flushed) and rewritten on each sync.
const IPVS_NAT_CHAINS = ['KUBE-SERVICES', 'KUBE-POSTROUTING', 'KUBE-NODE-PORT', 'KUBE-LOAD-BALANCER', 'KUBE-MARK-MASQ'];
const IPVS_FILTER_CHAINS = ['KUBE-FORWARD', 'KUBE-NODE-PORT', 'KUBE-PROXY-FIREWALL', 'KUBE-SOURCE-RANGES-FIREWALL', 'KUBE-IPVS-FILTER', 'KUBE-IPVS-OUT-FILTER'];

// ipsetWithIptablesChain, in its order (the -LOCAL sets before the others of their chain).
const IPSET_WITH_IPTABLES_CHAIN: readonly { set: string; table: 'nat' | 'filter'; from: string; to: string; matchType: string; protocol?: Protocol }[] = [
  { set: 'KUBE-LOOP-BACK', table: 'nat', from: 'KUBE-POSTROUTING', to: 'MASQUERADE', matchType: 'dst,dst,src' },
  { set: 'KUBE-LOAD-BALANCER', table: 'nat', from: 'KUBE-SERVICES', to: 'KUBE-LOAD-BALANCER', matchType: 'dst,dst' },
  { set: 'KUBE-LOAD-BALANCER-LOCAL', table: 'nat', from: 'KUBE-LOAD-BALANCER', to: 'RETURN', matchType: 'dst,dst' },
  { set: 'KUBE-NODE-PORT-LOCAL-TCP', table: 'nat', from: 'KUBE-NODE-PORT', to: 'RETURN', matchType: 'dst', protocol: 'tcp' },
  { set: 'KUBE-NODE-PORT-TCP', table: 'nat', from: 'KUBE-NODE-PORT', to: 'KUBE-MARK-MASQ', matchType: 'dst', protocol: 'tcp' },
  { set: 'KUBE-NODE-PORT-LOCAL-UDP', table: 'nat', from: 'KUBE-NODE-PORT', to: 'RETURN', matchType: 'dst', protocol: 'udp' },
  { set: 'KUBE-NODE-PORT-UDP', table: 'nat', from: 'KUBE-NODE-PORT', to: 'KUBE-MARK-MASQ', matchType: 'dst', protocol: 'udp' },
  // (the SCTP sets come here; the model has no SCTP)
  { set: 'KUBE-LOAD-BALANCER-FW', table: 'filter', from: 'KUBE-PROXY-FIREWALL', to: 'KUBE-SOURCE-RANGES-FIREWALL', matchType: 'dst,dst' },
  { set: 'KUBE-LOAD-BALANCER-SOURCE-CIDR', table: 'filter', from: 'KUBE-SOURCE-RANGES-FIREWALL', to: 'RETURN', matchType: 'dst,dst,src' },
  { set: 'KUBE-LOAD-BALANCER-SOURCE-IP', table: 'filter', from: 'KUBE-SOURCE-RANGES-FIREWALL', to: 'RETURN', matchType: 'dst,dst,src' },
];

/**
 * kube-proxy's IPVS-mode iptables-restore input (nat, then filter), to be
 * applied with `iptables-restore --noflush`, as writeIptablesRules builds it
 * from which sets are non-empty. The jump rules from the built-in chains are
 * `-I` lines, only for those the node lacks.
 */
export function renderIpvsIptablesRestore(model: ProxyModel, nodeName: string, nodeIp: string, opts: IpvsRenderOptions = {}): string {
  const state = ipvsState(model, nodeName, nodeIp, opts);
  const saved = parseSaved(opts.existingRules ?? '');
  const nonEmpty = (set: string): boolean => (state.ipsets.get(set) ?? []).length > 0;
  const natRules: string[] = [];
  const filterRules: string[] = [];
  const comment = (set: string): string => `-m comment --comment ${q(ipsetSpec(set).comment)}`;

  // Dismiss connects to localhost early in the service chain.
  natRules.push('-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN');

  for (const s of IPSET_WITH_IPTABLES_CHAIN) {
    if (!nonEmpty(s.set)) continue;
    const rule = `-A ${s.from}${s.protocol ? ` -p ${s.protocol}` : ''} ${comment(s.set)} -m set --match-set ${s.set} ${s.matchType} -j ${s.to}`;
    (s.table === 'filter' ? filterRules : natRules).push(rule);
  }

  if (nonEmpty('KUBE-CLUSTER-IP')) {
    const args = `-A KUBE-SERVICES ${comment('KUBE-CLUSTER-IP')} -m set --match-set KUBE-CLUSTER-IP`;
    if (opts.masqueradeAll) natRules.push(`${args} dst,dst -j KUBE-MARK-MASQ`);
    else if (opts.clusterCidr) natRules.push(`${args} dst,dst ! -s ${opts.clusterCidr} -j KUBE-MARK-MASQ`);
    // No local-traffic detector: masquerade node-originated traffic whose source is a VIP (kube-ipvs0 holds them all).
    else natRules.push(`${args} src,dst -j KUBE-MARK-MASQ`);
  }

  const externalIPRules = (args: string): void => {
    // Traffic from off the machine (not from a bridge port, not a local source), then traffic to a local external IP.
    natRules.push(`${args} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT`);
    natRules.push(`${args} -m addrtype --dst-type LOCAL -j ACCEPT`);
  };
  if (nonEmpty('KUBE-EXTERNAL-IP')) {
    const args = `-A KUBE-SERVICES ${comment('KUBE-EXTERNAL-IP')} -m set --match-set KUBE-EXTERNAL-IP dst,dst`;
    natRules.push(`${args} -j KUBE-MARK-MASQ`);
    externalIPRules(args);
  }
  if (nonEmpty('KUBE-EXTERNAL-IP-LOCAL')) externalIPRules(`-A KUBE-SERVICES ${comment('KUBE-EXTERNAL-IP-LOCAL')} -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst`);

  natRules.push('-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT');
  natRules.push('-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ');
  filterRules.push('-A KUBE-SOURCE-RANGES-FIREWALL -j DROP');
  // For IPVS both the source and the destination of node-originated LB traffic are the LB IP.
  for (const e of state.lbNoNodeAccess) filterRules.push(`-A KUBE-IPVS-OUT-FILTER -s ${e.ip} -m ipvs --vaddr ${e.ip} --vproto ${e.protocol} --vport ${e.port} -j DROP`);

  // acceptIPVSTraffic: must stay at the end of KUBE-SERVICES.
  for (const set of ['KUBE-CLUSTER-IP', 'KUBE-LOAD-BALANCER']) if (nonEmpty(set)) natRules.push(`-A KUBE-SERVICES -m set --match-set ${set} dst,dst -j ACCEPT`);

  filterRules.push(`-A KUBE-FORWARD -m comment --comment ${q('kubernetes forwarding rules')} -m mark --mark ${IPVS_MASQ_MARK}/${IPVS_MASQ_MARK} -j ACCEPT`);
  filterRules.push(`-A KUBE-FORWARD -m comment --comment ${q('kubernetes forwarding conntrack rule')} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`);
  filterRules.push(`-A KUBE-NODE-PORT ${comment('KUBE-HEALTH-CHECK-NODE-PORT')} -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT`);
  // KUBE-IPVS-FILTER: no access to other host ports through a VIP (kubernetes#72236).
  for (const set of ['KUBE-LOAD-BALANCER', 'KUBE-CLUSTER-IP', 'KUBE-EXTERNAL-IP', 'KUBE-EXTERNAL-IP-LOCAL']) filterRules.push(`-A KUBE-IPVS-FILTER -m set --match-set ${set} dst,dst -j RETURN`);
  filterRules.push('-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN');
  filterRules.push('-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT');

  natRules.push(`-A KUBE-POSTROUTING -m mark ! --mark ${IPVS_MASQ_MARK}/${IPVS_MASQ_MARK} -j RETURN`);
  natRules.push(`-A KUBE-POSTROUTING -j MARK --xor-mark ${IPVS_MASQ_MARK}`);
  natRules.push(`-A KUBE-POSTROUTING -m comment --comment ${q('kubernetes service traffic requiring SNAT')} -j MASQUERADE --random-fully`);
  natRules.push(`-A KUBE-MARK-MASQ -j MARK --or-mark ${IPVS_MASQ_MARK}`);

  const chainLine = (c: string): string => `:${c} - [0:0]`;
  const jumps = (table: 'filter' | 'nat'): string[] =>
    IPVS_JUMP_CHAINS.filter((j) => j.table === table && !hasJump(saved, j)).map((j) => `-I ${j.src} -m comment --comment ${q(j.comment)} -j ${j.dst}`);
  return [
    '*nat', ...IPVS_NAT_CHAINS.map(chainLine), ...jumps('nat'), ...natRules, 'COMMIT',
    '*filter', ...IPVS_FILTER_CHAINS.map(chainLine), ...jumps('filter'), ...filterRules, 'COMMIT', '',
  ].join('\n');
}

/**
 * The `ipvsadm -Ln` text (ipvsadm 1.31 list_all) of the virtual servers
 * kube-proxy would have programmed: version line, title, then each service
 * (`%-4s %s` protocol and address, scheduler) and its real servers
 * (`  -> %-28s %-7s %-6d %-10u %-10u`, so every such line ends in padding).
 */
export function renderIpvsadmList(model: ProxyModel, nodeName: string, nodeIp: string, opts: IpvsRenderOptions = {}): string {
  return formatIpvsadmList(ipvsState(model, nodeName, nodeIp, opts).virtualServers);
}

export function formatIpvsadmList(virtualServers: readonly IpvsVirtualServer[]): string {
  const lines = ['IP Virtual Server version 1.2.1 (size=4096)', 'Prot LocalAddress:Port Scheduler Flags', '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn'];
  for (const vs of virtualServers) {
    lines.push(`${vs.protocol.padEnd(4)} ${vs.address}:${vs.port} ${vs.scheduler}`);
    for (const rs of vs.realServers) {
      lines.push(`  -> ${`${rs.address}:${rs.port}`.slice(0, 28).padEnd(28)} ${'Masq'.padEnd(7)} ${String(rs.weight).padEnd(6)} ${String(rs.activeConn).padEnd(10)} ${String(rs.inActConn).padEnd(10)}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

// --- applying ---------------------------------------------------------------

export interface ApplyOptions {
  readonly nodeName: string;
  readonly nodeIp: string;
  readonly clusterCidr?: string;
  readonly masqueradeAll?: boolean;
}

/**
 * Renders for this node and loads it with `iptables-restore --noflush`, after
 * reading `iptables-save` so that stale chains are deleted and jump rules are
 * not duplicated (what kube-proxy's sync does). Returns the restore text.
 */
export async function applyIptables(lab: Lab, nodeNs: string, model: ProxyModel, opts: ApplyOptions): Promise<string> {
  const saved = await lab.exec(nodeNs, ['iptables-save']);
  const text = renderIptablesRestore(model, opts.nodeName, opts.nodeIp, {
    existingRules: saved.stdout,
    ...(opts.clusterCidr !== undefined ? { clusterCidr: opts.clusterCidr } : {}),
    ...(opts.masqueradeAll !== undefined ? { masqueradeAll: opts.masqueradeAll } : {}),
  });
  // kube-proxy sets route_localnet=1 when localhostNodePorts is on (its default).
  await lab.sysctl(nodeNs, 'net.ipv4.conf.all.route_localnet', 1);
  await lab.exec(nodeNs, ['iptables-restore', '--noflush'], { input: text });
  return text;
}

// kube-proxy's nftables proxier (syncProxyRules) does not delete a service or
// endpoint chain that stopped being used: it flushes it in that sync and
// deletes it in the first sync that starts more than a second later (kernels
// before 6.2 notice late that a map element no longer points to a chain). The
// proxier keeps those times in memory; here they are kept per lab and node.
const nftStale = new WeakMap<Lab, Map<string, Map<string, number>>>();

function staleChainsFor(lab: Lab, nodeNs: string): Map<string, number> {
  let perLab = nftStale.get(lab);
  if (!perLab) {
    perLab = new Map();
    nftStale.set(lab, perLab);
  }
  let stale = perLab.get(nodeNs);
  if (!stale) {
    stale = new Map();
    perLab.set(nodeNs, stale);
  }
  return stale;
}

/** The flushed-but-not-deleted chains of a node's table `ip kube-proxy`, with when they became stale (ms since epoch). */
export function nftStaleChains(lab: Lab, nodeNs: string): ReadonlyMap<string, number> {
  return new Map(staleChainsFor(lab, nodeNs));
}

/** Chain names of table `ip kube-proxy` in the namespace (none when the table does not exist). */
export async function nftKubeProxyChains(lab: Lab, nodeNs: string): Promise<string[]> {
  const res = await lab.exec(nodeNs, ['nft', 'list', 'table', 'ip', 'kube-proxy'], { check: false });
  if (res.code !== 0) return [];
  return [...res.stdout.matchAll(/^\s*chain (\S+) \{/gm)].map((m) => m[1] ?? '');
}

/**
 * Replaces table `ip kube-proxy` in one atomic `nft -f` transaction (add,
 * delete, recreate). kube-proxy updates the table in place instead; the
 * resulting ruleset is the same, and conntrack entries survive either way.
 * Like kube-proxy, a service or endpoint chain that is no longer used stays
 * behind, empty, until a sync that starts more than a second after it became
 * stale (see nftStaleChains).
 */
export async function applyNft(lab: Lab, nodeNs: string, model: ProxyModel, opts: ApplyOptions): Promise<string> {
  const render = (staleChains: readonly string[]): string =>
    renderNftRuleset(model, opts.nodeName, opts.nodeIp, {
      ...(opts.clusterCidr !== undefined ? { clusterCidr: opts.clusterCidr } : {}),
      ...(opts.masqueradeAll !== undefined ? { masqueradeAll: opts.masqueradeAll } : {}),
      staleChains,
    });
  const stale = staleChainsFor(lab, nodeNs);
  const start = Date.now();
  // Chains stale for more than a second are deleted first (here: simply not recreated).
  const deletedNow = new Set<string>();
  for (const [chain, since] of stale) {
    if (since >= start - 1_000) continue;
    stale.delete(chain);
    deletedNow.add(chain);
  }
  const active = new Set([...render([]).matchAll(/^add chain ip kube-proxy (\S+)/gm)].map((m) => m[1] ?? ''));
  for (const chain of await nftKubeProxyChains(lab, nodeNs)) {
    // isServiceChainName: only service and endpoint chains have a slash in their name.
    if (!chain.includes('/') || deletedNow.has(chain)) continue;
    // Every sync that still finds it unused flushes it again and restarts its clock.
    if (active.has(chain)) stale.delete(chain);
    else stale.set(chain, start);
  }
  const text = render([...stale.keys()].filter((c) => !active.has(c)));
  const input = `add table ip kube-proxy\ndelete table ip kube-proxy\n${text}`;
  await lab.exec(nodeNs, ['nft', '-f', '-'], { input });
  return text;
}

export interface IpvsApplyOptions extends ApplyOptions {
  /** The node's addresses outside kube-ipvs0 (default [nodeIp]). */
  readonly nodeIps?: readonly string[];
  readonly scheduler?: string;
}

export interface IpvsApplyResult {
  readonly state: IpvsState;
  /** What was fed to `ipset restore -exist`. */
  readonly ipsetRestore: string;
  /** What was fed to `iptables-restore --noflush`. */
  readonly iptablesRestore: string;
  /** `ipvsadm -Ln` as the node would print it (the kernel here cannot hold virtual servers). */
  readonly ipvsadm: string;
}

/**
 * kube-proxy's IPVS-mode sync, minus what needs IPVS: reads `ipset save` and
 * `iptables-save`, brings the sets to their members (`ipset restore -exist`),
 * then loads the iptables rules that match them (`iptables-restore
 * --noflush`). Binding the VIPs on kube-ipvs0 is the caller's (the Cluster's)
 * job; `state.boundAddresses` lists them. Throws on a Service whose
 * loadBalancerSourceRanges leave out the node: that rule needs `-m ipvs`.
 */
export async function applyIpvs(lab: Lab, nodeNs: string, model: ProxyModel, opts: IpvsApplyOptions): Promise<IpvsApplyResult> {
  const [savedRules, savedSets] = await Promise.all([lab.exec(nodeNs, ['iptables-save']), lab.exec(nodeNs, ['ipset', 'save'])]);
  const o: IpvsRenderOptions = {
    existingRules: savedRules.stdout,
    existingIpsets: savedSets.stdout,
    ...(opts.clusterCidr !== undefined ? { clusterCidr: opts.clusterCidr } : {}),
    ...(opts.masqueradeAll !== undefined ? { masqueradeAll: opts.masqueradeAll } : {}),
    ...(opts.nodeIps !== undefined ? { nodeIps: opts.nodeIps } : {}),
    ...(opts.scheduler !== undefined ? { scheduler: opts.scheduler } : {}),
  };
  const state = ipvsState(model, opts.nodeName, opts.nodeIp, o);
  if (state.lbNoNodeAccess.length > 0) {
    throw new Error(`IPVS mode on ${nodeNs}: ${state.lbNoNodeAccess.map((e) => `${e.ip}:${e.port}`).join(', ')} needs a KUBE-IPVS-OUT-FILTER rule with -m ipvs, and this kernel has no IPVS`);
  }
  const ipsetRestore = renderIpsetRestore(model, opts.nodeName, opts.nodeIp, o);
  await lab.exec(nodeNs, ['ipset', 'restore', '-exist'], { input: ipsetRestore });
  const iptablesRestore = renderIpvsIptablesRestore(model, opts.nodeName, opts.nodeIp, o);
  await lab.exec(nodeNs, ['iptables-restore', '--noflush'], { input: iptablesRestore });
  return { state, ipsetRestore, iptablesRestore, ipvsadm: formatIpvsadmList(state.virtualServers) };
}

/**
 * The conntrack flush kube-proxy runs after a UDP endpoint goes away
 * (conntrack.CleanStaleEntries): delete the flows to the ClusterIP that were
 * DNATed to the old pod. Returns how many entries were deleted.
 */
export async function kubeProxyConntrackCleanup(
  lab: Lab,
  nodeNs: string,
  target: { readonly clusterIP: string; readonly oldEndpointIp: string; readonly protocol?: Protocol },
): Promise<number> {
  const res = await lab.exec(nodeNs, ['conntrack', '-D', '-p', target.protocol ?? 'udp', '--orig-dst', target.clusterIP, '--dst-nat', target.oldEndpointIp], { check: false });
  // conntrack exits 1 with "0 flow entries have been deleted" when nothing matched.
  const m = /(\d+) flow entries have been deleted/.exec(res.stderr);
  if (!m) throw new Error(`conntrack -D in ${nodeNs} failed (exit ${res.code}): ${res.stderr.trim()}`);
  return Number(m[1]);
}

/** `conntrack -L [filters]` inside the namespace: one line per entry. */
export async function conntrackList(lab: Lab, ns: string, filters: readonly string[] = []): Promise<string[]> {
  const res = await lab.exec(ns, ['conntrack', '-L', ...filters], { check: false });
  if (res.code !== 0 && !/flow entries have been shown/.test(res.stderr)) throw new Error(`conntrack -L in ${ns} failed (exit ${res.code}): ${res.stderr.trim()}`);
  return res.stdout.split('\n').filter((l) => l.trim() !== '');
}

export interface RuleCounter {
  readonly table: string;
  readonly chain: string;
  /** The rule as iptables-save prints it, without the counters. */
  readonly rule: string;
  readonly packets: number;
  readonly bytes: number;
}

/** Packet/byte counters of every rule, from `iptables-save -c`. */
export async function iptablesCounters(lab: Lab, ns: string, table = 'nat'): Promise<RuleCounter[]> {
  const res = await lab.exec(ns, ['iptables-save', '-c', '-t', table]);
  const out: RuleCounter[] = [];
  for (const line of res.stdout.split('\n')) {
    const m = /^\[(\d+):(\d+)\] (-A (\S+) .*)$/.exec(line);
    if (m) out.push({ table, chain: m[4] ?? '', rule: m[3] ?? '', packets: Number(m[1]), bytes: Number(m[2]) });
  }
  return out;
}
