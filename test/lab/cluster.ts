// A tiny Kubernetes cluster on the real kernel, shaped like EKS with the AWS
// VPC CNI:
//
//   namespace `lb`: the VPC router and cloud load balancer. A bridge `vpc0`
//     (198.18.0.1/24) is the node subnet; it routes each node's pod range to
//     that node and DNATs load-balancer addresses to node NodePorts without
//     SNAT (client IP preservation, instance targets), so replies must come
//     back through it to be un-NATed.
//   namespaces `node-N`: uplink eth0 198.18.0.(10+N)/24, default via the
//     router, ip_forward on, rp_filter=2 (loose) on eth0 as the VPC CNI sets
//     it, a blackhole route for its own pod range 198.19.N.0/24, and one /32
//     host route per pod through that pod's veth (`eni…`), as the CNI does.
//   namespaces `pod-NAME`: eth0 with a /32, default route via the node IP with
//     a permanent neighbour entry for it (the CNI's static ARP).
//
// Addresses: 198.18.0.0/24 nodes, 198.18.64.0/24 ClusterIPs, 198.18.100.0/24
// load-balancer IPs, 198.19.0.0/16 pods. All of 198.18.0.0/15 (RFC 2544), and
// only inside the lab's namespaces.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import type { Lab } from './netns.ts';
import { assertInterfaceName } from './netns.ts';
import { applyIpvs, applyIptables, applyNft, ipvsState, probability, type IpvsApplyResult, type ProxyModel } from './kube-proxy.ts';
import type { LabKubeApi } from './kube-api.ts';

export const ROUTER_NS = 'lb';
export const ROUTER_IP = '198.18.0.1';
export const NODE_SUBNET_PREFIX = 24;
export const CLUSTER_CIDR = '198.19.0.0/16';
export const SERVICE_CIDR = '198.18.64.0/24';
export const LOAD_BALANCER_RANGE = '198.18.100.0/24';
const ROUTER_BRIDGE = 'vpc0';
const NODE_UPLINK = 'eth0';

/**
 * kube-proxy's mode on a node. 'ipvs' loads what the IPVS proxier writes
 * (its ipsets, its iptables rules, the VIPs on kube-ipvs0); the kernel has no
 * IPVS, so nothing forwards Service traffic on such a node, and the virtual
 * servers exist only as `ipvsadm -Ln` text (Cluster.ipvs()).
 */
export type ProxyMode = 'iptables' | 'nft' | 'ipvs';

export interface NodeSpec {
  /** e.g. `node-1`; also the kube-proxy node name. At most 13 characters (it names the router-side veth). */
  readonly name: string;
  /** Which kube-proxy mode renders this node's rules (default iptables). */
  readonly proxyMode?: ProxyMode;
}

export interface PodSpec {
  readonly name: string;
  readonly node: string;
}

export interface ClusterSpec {
  readonly nodes: readonly NodeSpec[];
  readonly pods?: readonly PodSpec[];
}

export interface ClusterNode {
  readonly name: string;
  /** Logical namespace name in the lab (same as the node name). */
  readonly ns: string;
  /** Real `ip netns` name, for `ip netns exec` from outside the lab. */
  readonly netns: string;
  /** 1-based position; the node's IP is 198.18.0.(10+index) and its pod range 198.19.index.0/24. */
  readonly index: number;
  readonly ip: string;
  readonly podCidr: string;
  readonly uplink: string;
  readonly proxyMode: ProxyMode;
}

export interface ClusterPod {
  readonly name: string;
  readonly node: string;
  readonly ns: string;
  readonly netns: string;
  readonly ip: string;
  /** The node-side veth (`eni` + 11 hex, as the VPC CNI names them). */
  readonly hostInterface: string;
}

export interface LoadBalancerTarget {
  readonly nodeIp: string;
  readonly nodePort: number;
}

export interface LoadBalancer {
  readonly ip: string;
  readonly port: number;
  readonly protocol: 'tcp' | 'udp';
  readonly targets: readonly LoadBalancerTarget[];
  /** The router's nat chain that picks a target. */
  readonly chain: string;
}

/** Address of the node at 1-based `index` (198.18.0.(10+index)). */
export function nodeIpOf(index: number): string {
  return `198.18.0.${10 + index}`;
}

/** Address of the `ordinal`-th pod (0-based, in creation order) on the node at `nodeIndex`: 198.19.nodeIndex.(10+ordinal). */
export function podIpOf(nodeIndex: number, ordinal: number): string {
  return `198.19.${nodeIndex}.${10 + ordinal}`;
}

function shortHash(text: string, hexChars: number): string {
  return createHash('sha256').update(text).digest('hex').slice(0, hexChars);
}

// A locally administered unicast MAC derived from a name, so the pod's static
// neighbour entry can be written before asking the kernel anything.
function macFor(text: string): string {
  const h = shortHash(text, 10);
  return `02:${h.match(/../g)?.join(':') ?? '00:00:00:00:00'}`;
}

export class Cluster {
  readonly lab: Lab;
  readonly router: { readonly ns: string; readonly netns: string; readonly ip: string };
  #nodes = new Map<string, ClusterNode>();
  #pods = new Map<string, ClusterPod>();
  #nextOrdinal = new Map<string, number>();
  #loadBalancers: LoadBalancer[] = [];
  #kubeIpvs0 = new Set<string>();
  #ipvs = new Map<string, IpvsApplyResult>();
  #api: LabKubeApi | null = null;

  /** From now on every applyServices is published to this Kubernetes API first. */
  publishTo(api: LabKubeApi): void {
    this.#api = api;
  }

  constructor(lab: Lab, router: { ns: string; netns: string; ip: string }) {
    this.lab = lab;
    this.router = router;
  }

  get nodes(): readonly ClusterNode[] {
    return [...this.#nodes.values()];
  }

  get pods(): readonly ClusterPod[] {
    return [...this.#pods.values()];
  }

  get loadBalancers(): readonly LoadBalancer[] {
    return this.#loadBalancers;
  }

  node(name: string): ClusterNode {
    const n = this.#nodes.get(name);
    if (!n) throw new Error(`no node ${JSON.stringify(name)} in this cluster (nodes: ${[...this.#nodes.keys()].join(', ')})`);
    return n;
  }

  pod(name: string): ClusterPod {
    const p = this.#pods.get(name);
    if (!p) throw new Error(`no pod ${JSON.stringify(name)} in this cluster (pods: ${[...this.#pods.keys()].join(', ')})`);
    return p;
  }

  /** Internal: used by buildCluster. */
  async addNode(spec: NodeSpec, index: number): Promise<ClusterNode> {
    const lab = this.lab;
    const routerSide = `v-${spec.name}`;
    assertInterfaceName(routerSide);
    const netns = await lab.addNamespace(spec.name);
    const node: ClusterNode = {
      name: spec.name,
      ns: spec.name,
      netns,
      index,
      ip: nodeIpOf(index),
      podCidr: `198.19.${index}.0/24`,
      uplink: NODE_UPLINK,
      proxyMode: spec.proxyMode ?? 'iptables',
    };
    this.#nodes.set(node.name, node);
    this.#nextOrdinal.set(node.name, 0);
    // IPv4 conf in a new namespace is copied from the host's
    // (devconf_inherit_init_net=0), so everything relied on is written here.
    await lab.sysctls(node.ns, {
      'net.ipv6.conf.all.disable_ipv6': 1,
      'net.ipv6.conf.default.disable_ipv6': 1,
      'net.ipv4.ip_forward': 1,
      'net.ipv4.conf.all.rp_filter': 0,
      'net.ipv4.conf.default.rp_filter': 0,
      // accept_local=0 (the default) makes a packet whose source is one of our
      // local addresses a martian: seed 003's health checks die on it.
      'net.ipv4.conf.all.accept_local': 0,
      'net.ipv4.conf.default.accept_local': 0,
      'net.ipv4.conf.all.send_redirects': 0,
      'net.ipv4.conf.default.send_redirects': 0,
      'net.ipv4.conf.all.accept_redirects': 0,
      'net.ipv4.conf.default.accept_redirects': 0,
    });
    await lab.veth(node.ns, NODE_UPLINK, ROUTER_NS, routerSide);
    await lab.ip(ROUTER_NS, ['link', 'set', routerSide, 'master', ROUTER_BRIDGE]);
    await lab.ip(node.ns, ['addr', 'add', `${node.ip}/${NODE_SUBNET_PREFIX}`, 'dev', NODE_UPLINK]);
    await lab.ip(node.ns, ['route', 'add', 'default', 'via', ROUTER_IP, 'dev', NODE_UPLINK]);
    // A deleted pod's address must die here, not bounce between node and router until its TTL runs out.
    await lab.ip(node.ns, ['route', 'add', 'blackhole', node.podCidr]);
    // Loose reverse-path filtering on the uplink (AWS VPC CNI sets rp_filter=2):
    // a hairpinned SYN whose source is a local pod arrives on eth0, and strict
    // mode (1) would drop it because the route back to that pod is its veth.
    await lab.sysctls(node.ns, { [`net.ipv4.conf.${NODE_UPLINK}.rp_filter`]: 2, [`net.ipv4.conf.${NODE_UPLINK}.accept_local`]: 0 });
    await lab.ip(ROUTER_NS, ['route', 'add', node.podCidr, 'via', node.ip, 'dev', ROUTER_BRIDGE]);
    return node;
  }

  /** A pod namespace on `nodeName` with the next free address of that node's range. */
  async addPod(name: string, nodeName: string): Promise<ClusterPod> {
    if (this.#pods.has(name)) throw new Error(`pod ${name} already exists`);
    const node = this.node(nodeName);
    const ordinal = this.#nextOrdinal.get(nodeName) ?? 0;
    if (ordinal > 240) throw new Error(`node ${nodeName} ran out of pod addresses`);
    this.#nextOrdinal.set(nodeName, ordinal + 1);
    const ns = `pod-${name}`;
    const netns = await this.lab.addNamespace(ns);
    const pod: ClusterPod = {
      name,
      node: nodeName,
      ns,
      netns,
      ip: podIpOf(node.index, ordinal),
      hostInterface: `eni${shortHash(`${nodeName}/${name}`, 11)}`,
    };
    this.#pods.set(name, pod);
    const hostMac = macFor(`${this.lab.prefix}/${nodeName}/${name}`);
    await this.lab.sysctls(ns, {
      'net.ipv6.conf.all.disable_ipv6': 1,
      'net.ipv6.conf.default.disable_ipv6': 1,
      'net.ipv4.conf.all.rp_filter': 0,
      'net.ipv4.conf.default.rp_filter': 0,
    });
    await this.lab.veth(ns, 'eth0', node.ns, pod.hostInterface, { macB: hostMac });
    await this.lab.ip(ns, ['addr', 'add', `${pod.ip}/32`, 'dev', 'eth0']);
    await this.lab.ip(ns, ['route', 'add', node.ip, 'dev', 'eth0', 'scope', 'link']);
    await this.lab.ip(ns, ['route', 'add', 'default', 'via', node.ip, 'dev', 'eth0']);
    await this.lab.ip(ns, ['neigh', 'replace', node.ip, 'lladdr', hostMac, 'dev', 'eth0', 'nud', 'permanent']);
    await this.lab.ip(node.ns, ['route', 'add', `${pod.ip}/32`, 'dev', pod.hostInterface, 'scope', 'link']);
    return pod;
  }

  /**
   * Deletes the pod: its node-side veth first (which removes the host route at
   * once; a namespace is destroyed asynchronously), then its namespace and
   * every process in it. Its address then falls into the node's blackhole.
   */
  async removePod(name: string): Promise<void> {
    const pod = this.pod(name);
    await this.lab.ip(this.node(pod.node).ns, ['link', 'del', pod.hostInterface]);
    await this.lab.deleteNamespace(pod.ns);
    this.#pods.delete(name);
  }

  /**
   * The cloud load balancer: the router DNATs `lbIp:port` to one of the
   * targets (random, like `-m statistic`; a single target is a fixed choice)
   * and never SNATs. The LB address is also put on the router's loopback so
   * health checks can be sent from it (seed 003's CLB probes from its VIP).
   */
  async addLoadBalancer(lbIp: string, port: number, targets: readonly LoadBalancerTarget[], opts: { protocol?: 'tcp' | 'udp' } = {}): Promise<LoadBalancer> {
    if (targets.length === 0) throw new Error('a load balancer needs at least one target');
    const protocol = opts.protocol ?? 'tcp';
    const chain = `CLOUD-LB-${this.#loadBalancers.length + 1}`;
    const lines = ['*nat', `:${chain} - [0:0]`,
      `-A PREROUTING -d ${lbIp}/32 -p ${protocol} -m ${protocol} --dport ${port} -m comment --comment "cloud load balancer ${lbIp}:${port}" -j ${chain}`];
    targets.forEach((t, i) => {
      const stat = i < targets.length - 1 ? `-m statistic --mode random --probability ${probability(targets.length - i)} ` : '';
      lines.push(`-A ${chain} -p ${protocol} ${stat}-j DNAT --to-destination ${t.nodeIp}:${t.nodePort}`);
    });
    lines.push('COMMIT', '');
    await this.lab.exec(ROUTER_NS, ['iptables-restore', '--noflush'], { input: lines.join('\n') });
    const res = await this.lab.ip(ROUTER_NS, ['addr', 'add', `${lbIp}/32`, 'dev', 'lo'], { check: false });
    if (res.code !== 0 && !/File exists/.test(res.stderr)) throw new Error(`cannot add ${lbIp} to the router's lo: ${res.stderr.trim()}`);
    const lb: LoadBalancer = { ip: lbIp, port, protocol, targets, chain };
    this.#loadBalancers.push(lb);
    return lb;
  }

  /**
   * What kube-proxy in IPVS mode does with a Service address: a bridge named
   * kube-ipvs0 with no ports, left DOWN with `arp off` (a stand-in for the
   * dummy interface, which this kernel lacks), holding the address as a /32.
   * The kernel still puts the address in the `local` routing table. Binding an
   * address that is already there is a no-op (netlinkHandle.EnsureAddressBind).
   */
  async bindKubeIpvs0(nodeName: string, ip: string): Promise<void> {
    const node = this.node(nodeName);
    if (!this.#kubeIpvs0.has(nodeName)) {
      await this.lab.bridge(node.ns, 'kube-ipvs0', { up: false });
      await this.lab.ip(node.ns, ['link', 'set', 'kube-ipvs0', 'arp', 'off']);
      this.#kubeIpvs0.add(nodeName);
    }
    const res = await this.lab.ip(node.ns, ['addr', 'add', `${ip}/32`, 'dev', 'kube-ipvs0'], { check: false });
    if (res.code !== 0 && !/File exists|already assigned/.test(res.stderr)) throw new Error(`cannot bind ${ip} on kube-ipvs0 of ${nodeName}: ${res.stderr.trim()}`);
  }

  /** Removes an address from kube-ipvs0 (netlinkHandle.UnbindAddress). */
  async unbindKubeIpvs0(nodeName: string, ip: string): Promise<void> {
    await this.lab.ip(this.node(nodeName).ns, ['addr', 'del', `${ip}/32`, 'dev', 'kube-ipvs0']);
  }

  /** The IPv4 addresses on kube-ipvs0 (none before it exists). */
  async kubeIpvs0Addresses(nodeName: string): Promise<string[]> {
    if (!this.#kubeIpvs0.has(nodeName)) return [];
    const out = (await this.lab.ip(this.node(nodeName).ns, ['-o', '-4', 'addr', 'show', 'dev', 'kube-ipvs0'])).stdout;
    return [...out.matchAll(/ inet (\d+\.\d+\.\d+\.\d+)\//g)].map((m) => m[1] ?? '');
  }

  /** The last IPVS-mode sync on the node: its ipsets, iptables rules and `ipvsadm -Ln` text (undefined for other modes). */
  ipvs(nodeName: string): IpvsApplyResult | undefined {
    return this.#ipvs.get(nodeName);
  }

  // kube-proxy's IPVS sync in its order: bind the VIPs (syncService), sync
  // the sets, restore iptables, then unbind addresses no Service uses.
  async #applyIpvs(node: ClusterNode, model: ProxyModel, opts: { clusterCidr?: string }): Promise<void> {
    const o = { nodeName: node.name, nodeIp: node.ip, ...(opts.clusterCidr !== undefined ? { clusterCidr: opts.clusterCidr } : {}) };
    const want = ipvsState(model, node.name, node.ip, o).boundAddresses;
    // The dummy device exists even with no Service (EnsureDummyDevice).
    if (want.length === 0 && !this.#kubeIpvs0.has(node.name)) {
      await this.lab.bridge(node.ns, 'kube-ipvs0', { up: false });
      await this.lab.ip(node.ns, ['link', 'set', 'kube-ipvs0', 'arp', 'off']);
      this.#kubeIpvs0.add(node.name);
    }
    const alreadyBound = await this.kubeIpvs0Addresses(node.name);
    for (const ip of want) if (!alreadyBound.includes(ip)) await this.bindKubeIpvs0(node.name, ip);
    this.#ipvs.set(node.name, await applyIpvs(this.lab, node.ns, model, o));
    for (const ip of alreadyBound) if (!want.includes(ip)) await this.unbindKubeIpvs0(node.name, ip);
  }

  /** Renders and applies the model on every node, in each node's proxy mode (what every kube-proxy does after a change). */
  async applyServices(model: ProxyModel, opts: { clusterCidr?: string } = {}): Promise<void> {
    this.#api?.publish(model, new Map(this.pods.map((p) => [p.ip, p.name])));
    await Promise.all(
      this.nodes.map((n) => {
        const o = { nodeName: n.name, nodeIp: n.ip, ...(opts.clusterCidr !== undefined ? { clusterCidr: opts.clusterCidr } : {}) };
        if (n.proxyMode === 'ipvs') return this.#applyIpvs(n, model, opts);
        return n.proxyMode === 'nft' ? applyNft(this.lab, n.ns, model, o) : applyIptables(this.lab, n.ns, model, o);
      }),
    );
  }
}

/** Builds the router, the nodes and the initial pods. On failure the lab still knows every namespace made so far. */
export async function buildCluster(lab: Lab, spec: ClusterSpec): Promise<Cluster> {
  if (spec.nodes.length === 0 || spec.nodes.length > 200) throw new Error('a cluster needs 1 to 200 nodes');
  const names = new Set<string>();
  for (const n of spec.nodes) {
    if (names.has(n.name) || n.name === ROUTER_NS) throw new Error(`duplicate or reserved node name ${n.name}`);
    names.add(n.name);
  }
  const netns = await lab.addNamespace(ROUTER_NS);
  const cluster = new Cluster(lab, { ns: ROUTER_NS, netns, ip: ROUTER_IP });
  await lab.sysctls(ROUTER_NS, {
    'net.ipv6.conf.all.disable_ipv6': 1,
    'net.ipv6.conf.default.disable_ipv6': 1,
    'net.ipv4.ip_forward': 1,
    'net.ipv4.conf.all.rp_filter': 0,
    'net.ipv4.conf.default.rp_filter': 0,
    // The router forwards node-to-pod traffic back out of the interface it
    // came in on; it must not tell nodes to take a shortcut.
    'net.ipv4.conf.all.send_redirects': 0,
    'net.ipv4.conf.default.send_redirects': 0,
    // ARP requests carry the router's own vpc0 address, as a VPC router's do,
    // never an LB address from lo: a node that holds that LB address (IPVS
    // mode, kube-ipvs0) treats an ARP request from it as a martian and never
    // answers, so the health checks would not even leave the router (seed 003
    // is about the SYNs the node drops, not about ARP).
    'net.ipv4.conf.all.arp_announce': 2,
    'net.ipv4.conf.default.arp_announce': 2,
  });
  // When br_netfilter is loaded it is on by default in every namespace: frames
  // bridged between nodes would cross the router's netfilter (half a flow
  // each), which no VPC router does.
  if (existsSync('/proc/sys/net/bridge/bridge-nf-call-iptables')) await lab.sysctl(ROUTER_NS, 'net.bridge.bridge-nf-call-iptables', 0);
  await lab.bridge(ROUTER_NS, ROUTER_BRIDGE);
  await lab.ip(ROUTER_NS, ['addr', 'add', `${ROUTER_IP}/${NODE_SUBNET_PREFIX}`, 'dev', ROUTER_BRIDGE]);
  await Promise.all(spec.nodes.map((n, i) => cluster.addNode(n, i + 1)));
  // Pods of one node are added in spec order so their addresses are predictable.
  const byNode = new Map<string, PodSpec[]>();
  for (const p of spec.pods ?? []) byNode.set(p.node, [...(byNode.get(p.node) ?? []), p]);
  await Promise.all(
    [...byNode.entries()].map(async ([node, pods]) => {
      for (const p of pods) await cluster.addPod(p.name, node);
    }),
  );
  return cluster;
}
