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

  return [...head, ...chains, ...rules, ...elements, ''].join('\n');
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

/**
 * Replaces table `ip kube-proxy` in one atomic `nft -f` transaction (add,
 * delete, recreate). kube-proxy updates the table in place instead; the
 * resulting ruleset is the same, and conntrack entries survive either way.
 */
export async function applyNft(lab: Lab, nodeNs: string, model: ProxyModel, opts: ApplyOptions): Promise<string> {
  const text = renderNftRuleset(model, opts.nodeName, opts.nodeIp, {
    ...(opts.clusterCidr !== undefined ? { clusterCidr: opts.clusterCidr } : {}),
    ...(opts.masqueradeAll !== undefined ? { masqueradeAll: opts.masqueradeAll } : {}),
  });
  const input = `add table ip kube-proxy\ndelete table ip kube-proxy\n${text}`;
  await lab.exec(nodeNs, ['nft', '-f', '-'], { input });
  return text;
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
