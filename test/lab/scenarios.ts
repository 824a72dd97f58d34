// The seeds' failures, reproduced on the real kernel. Each scenario builds its
// own cluster inside the Lab it is given (one Lab per scenario keeps them
// independent), and exposes:
//   facts   what an observer on the node should find, known before setup()
//           (addresses are deterministic: see nodeIpOf/podIpOf);
//   setup() the cluster, the pods and their servers, kube-proxy's rules, the LB;
//   drive() the traffic that makes the failure happen, bounded in time.
import { buildCluster, nodeIpOf, podIpOf, ROUTER_IP, type Cluster, type ProxyMode } from './cluster.ts';
import {
  conntrackList,
  iptablesCounters,
  iptablesServiceChains,
  kubeProxyConntrackCleanup,
  servicePortName,
  type RuleCounter,
  type ServiceModel,
} from './kube-proxy.ts';
import type { Lab } from './netns.ts';
import type { LabKubeApi } from './kube-api.ts';
import { runClient, startClient, startServer, type Attempt } from './traffic.ts';

export type ScenarioName = 'lbHairpin' | 'lbHealthCheckDropped' | 'udpRolloutStaleConntrack' | 'cleanRollout';

/** A flow as the sender puts it on the wire. */
export interface Tuple {
  readonly protocol: 'tcp' | 'udp';
  readonly src: string;
  readonly sport: number;
  readonly dst: string;
  readonly dport: number;
}

export interface EndpointFact {
  readonly pod: string;
  readonly node: string;
  readonly ip: string;
  readonly port: number;
}

export interface ServiceFact {
  readonly namespace: string;
  readonly name: string;
  readonly portName: string;
  /** kube-proxy's service port name (`ns/name:port`), as in its rule comments. */
  readonly key: string;
  readonly protocol: 'tcp' | 'udp';
  readonly clusterIP: string;
  readonly port: number;
  readonly nodePort?: number;
  readonly externalTrafficPolicy: 'Cluster' | 'Local';
  /** KUBE-SVC-… / KUBE-EXT-… / KUBE-SVL-… names (iptables mode). */
  readonly chains: { readonly svc: string; readonly ext: string; readonly svl: string };
}

export interface LoadBalancerFact {
  readonly ip: string;
  readonly port: number;
  readonly targets: readonly { readonly node: string; readonly nodeIp: string; readonly nodePort: number }[];
}

export interface ScenarioFacts {
  readonly scenario: ScenarioName;
  /** The node where the failure shows (its kube-proxy rules, conntrack, routes). */
  readonly node: string;
  readonly nodeIp: string;
  /** The failing flow as the client sends it. */
  readonly tuple: Tuple;
  /** The endpoint the flow ends up at (or should have). */
  readonly endpoint: EndpointFact;
  readonly service: ServiceFact;
}

export interface Scenario<F extends ScenarioFacts, R, D = undefined> {
  readonly name: ScenarioName;
  readonly facts: F;
  readonly lab: Lab;
  /** The cluster; throws before setup(). */
  cluster(): Cluster;
  setup(): Promise<void>;
  drive(opts?: D): Promise<R>;
}

export interface ScenarioOptions {
  /** kube-proxy mode on every node (default iptables; lbHealthCheckDropped: ipvs). lbHairpin and the UDP rollouts need iptables or nft: nothing forwards Service traffic on an IPVS-mode node here. */
  readonly proxyMode?: ProxyMode;
  /** Publish the scenario's Services and EndpointSlices, through every change, to this Kubernetes API. */
  readonly kubeApi?: LabKubeApi;
}

function serviceFact(svc: ServiceModel): ServiceFact {
  return {
    namespace: svc.namespace,
    name: svc.name,
    portName: svc.portName,
    key: servicePortName(svc),
    protocol: svc.protocol,
    clusterIP: svc.clusterIP,
    port: svc.port,
    ...(svc.nodePort !== undefined ? { nodePort: svc.nodePort } : {}),
    externalTrafficPolicy: svc.externalTrafficPolicy,
    chains: iptablesServiceChains(svc),
  };
}

function holder(): { get(): Cluster; set(c: Cluster): void } {
  let cluster: Cluster | undefined;
  return {
    get: () => {
      if (!cluster) throw new Error('scenario setup() has not run');
      return cluster;
    },
    set: (c) => {
      cluster = c;
    },
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Sum over CPUs of `in_martian_src` in /proc/net/stat/rt_cache. Host-wide (not per namespace): it can only be compared before/after. */
export async function readMartianSourceCount(lab: Lab, ns: string): Promise<number> {
  const text = (await lab.exec(ns, ['cat', '/proc/net/stat/rt_cache'])).stdout;
  const [header, ...rows] = text.trim().split('\n');
  const col = (header ?? '').trim().split(/\s+/).indexOf('in_martian_src');
  if (col < 0) throw new Error(`no in_martian_src column in /proc/net/stat/rt_cache: ${header}`);
  return rows.reduce((sum, row) => sum + parseInt(row.trim().split(/\s+/)[col] ?? '0', 16), 0);
}

// --- (a) cloud LB hairpin (seeds 000, 001) ---------------------------------

export interface LbHairpinFacts extends ScenarioFacts {
  readonly scenario: 'lbHairpin';
  readonly loadBalancer: LoadBalancerFact;
  /** The client pod on the node the LB sends the flow back to. */
  readonly clientPod: string;
  /** The same SYN after the LB's DNAT: what reaches the node's NodePort. */
  readonly natTuple: Tuple;
  /** A pod on another node, for which the same LB address works. */
  readonly otherNodeClientPod: string;
}

export interface LbHairpinResult {
  /** The hairpinned connection: a timeout (its SYN-ACK came from node:NodePort and was reset). */
  readonly hairpin: readonly Attempt[];
  /** The same LB address from a pod on another node: answered. */
  readonly fromOtherNode: readonly Attempt[];
}

/**
 * A pod on node-1 connects to an NLB-style load balancer (instance targets,
 * client IP preserved) that picks node-1's NodePort. node-1 DNATs to the
 * endpoint and masquerades (externalTrafficPolicy Cluster), the endpoint's
 * SYN-ACK is un-NATed to node-1:NodePort -> pod:sport and delivered straight
 * to the pod over its host route; the pod's socket waits for LB:80, so it
 * answers RST and keeps retransmitting its SYN until it times out.
 *
 * The model deliberately has no loadBalancerIP: the NLB publishes only a
 * hostname in the Service status, so kube-proxy writes no "loadbalancer IP"
 * rule and the pod's traffic really leaves for the LB (with the IP in the
 * status, KUBE-SERVICES would short-circuit it and the bug would not happen).
 */
export function lbHairpin(lab: Lab, opts: ScenarioOptions = {}): Scenario<LbHairpinFacts, LbHairpinResult> {
  const c = holder();
  const lbIp = '198.18.100.10';
  // Pods of node-1: netshoot (.1.10); of node-2: nginx (.2.10), curl (.2.11).
  const svc: ServiceModel = {
    namespace: 'nginx-demo',
    name: 'service-nginx-demo',
    portName: '',
    protocol: 'tcp',
    clusterIP: '198.18.64.10',
    port: 80,
    nodePort: 30161,
    externalTrafficPolicy: 'Cluster',
    endpoints: [{ ip: podIpOf(2, 0), port: 80, nodeName: 'node-2', ready: true }],
    // What the AWS Load Balancer Controller's Service looks like in the API (seed 001): instance targets, a hostname only.
    annotations: { 'service.beta.kubernetes.io/aws-load-balancer-type': 'external', 'service.beta.kubernetes.io/aws-load-balancer-nlb-target-type': 'instance' },
    loadBalancerHostname: 'k8s-nginxdem-servicen-0a1b2c3d4e-0123456789abcdef.elb.us-east-1.amazonaws.com',
  };
  const sport = 52618;
  const facts: LbHairpinFacts = {
    scenario: 'lbHairpin',
    node: 'node-1',
    nodeIp: nodeIpOf(1),
    tuple: { protocol: 'tcp', src: podIpOf(1, 0), sport, dst: lbIp, dport: 80 },
    natTuple: { protocol: 'tcp', src: podIpOf(1, 0), sport, dst: nodeIpOf(1), dport: 30161 },
    endpoint: { pod: 'nginx', node: 'node-2', ip: podIpOf(2, 0), port: 80 },
    service: serviceFact(svc),
    loadBalancer: { ip: lbIp, port: 80, targets: [{ node: 'node-1', nodeIp: nodeIpOf(1), nodePort: 30161 }] },
    clientPod: 'netshoot',
    otherNodeClientPod: 'curl',
  };
  return {
    name: 'lbHairpin',
    facts,
    lab,
    cluster: c.get,
    async setup() {
      const mode = opts.proxyMode ?? 'iptables';
      if (mode === 'ipvs') throw new Error('lbHairpin needs a proxy mode that forwards Service traffic (iptables or nft): this kernel has no IPVS');
      const cluster = await buildCluster(lab, {
        nodes: [{ name: 'node-1', proxyMode: mode }, { name: 'node-2', proxyMode: mode }],
        pods: [{ name: 'netshoot', node: 'node-1' }, { name: 'nginx', node: 'node-2' }, { name: 'curl', node: 'node-2' }],
      });
      if (opts.kubeApi) cluster.publishTo(opts.kubeApi);
      c.set(cluster);
      await startServer(lab, cluster.pod('nginx').ns, { kind: 'tcp', port: 80, name: 'nginx' });
      await cluster.applyServices({ services: [svc] });
      // The LB picks node-1: a single target is the "chosen fixed target".
      await cluster.addLoadBalancer(lbIp, 80, facts.loadBalancer.targets);
    },
    async drive() {
      const cluster = c.get();
      // 3 s: the first SYN and the retransmissions at 1 s and 3 s, each answered by a SYN-ACK from node-1:30161 and reset by the pod.
      const [hairpin, fromOtherNode] = await Promise.all([
        runClient(lab, cluster.pod('netshoot').ns, { mode: 'tcp-client', host: lbIp, port: 80, count: 1, timeoutMs: 3_000, sport }),
        runClient(lab, cluster.pod('curl').ns, { mode: 'tcp-client', host: lbIp, port: 80, count: 3, timeoutMs: 2_000 }),
      ]);
      return { hairpin, fromOtherNode };
    },
  };
}

// --- (b) LB health checks dropped: LB IP bound on kube-ipvs0 (seed 003) ----

export interface LbHealthCheckFacts extends ScenarioFacts {
  readonly scenario: 'lbHealthCheckDropped';
  readonly loadBalancer: LoadBalancerFact;
  /** kube-proxy's mode on node-1: ipvs by default, as on the seed's 1.12 cluster. */
  readonly proxyMode: ProxyMode;
  /** What `ip route show table local` holds on the node for the LB address. */
  readonly localRoute: string;
  /** IPVS mode binds every ClusterIP too: its line in the local table. */
  readonly clusterIpLocalRoute?: string;
  readonly sysctls: Readonly<Record<string, string>>;
  /** The router's own address: the control probes come from it, so only the source differs. */
  readonly controlSource: string;
  /** kube-proxy's health-check server port (it serves it in every mode); a stand-in TCP server listens on node-1. */
  readonly healthCheckNodePort: number;
}

/** One rule's packet counter around a phase, from `iptables-save -c`. */
export interface RuleCounterDelta {
  readonly table: string;
  readonly chain: string;
  /** The rule as iptables-save prints it, without the counters. */
  readonly rule: string;
  readonly before: number;
  readonly after: number;
}

export interface LbHealthCheckPhase {
  /** kube-proxy's rules in KUBE-SERVICES, KUBE-NODE-PORT (IPVS) and KUBE-NODEPORTS (iptables), nat and filter. None in nft mode. */
  readonly ruleCounters: readonly RuleCounterDelta[];
  /** Host-wide in_martian_src. */
  readonly martianSources: { readonly before: number; readonly after: number };
}

export interface LbHealthCheckResult {
  readonly proxyMode: ProxyMode;
  /** Probes sourced from the LB IP to node:NodePort: all time out. */
  readonly healthChecks: readonly Attempt[];
  /**
   * The same probes from the router's own address, after the LB-sourced ones.
   * iptables and nft modes: answered by the pod through the NodePort (ok).
   * ipvs mode: `refused`. Nothing answers a NodePort without IPVS, so the
   * node's own TCP stack resets the SYN: it was routed to local delivery and
   * passed INPUT, which is exactly what the LB-sourced SYN never gets to do.
   */
  readonly control: readonly Attempt[];
  /** The same pair of probes to kube-proxy's health-check port, where a server does listen in every mode: from the LB IP they time out, from the router they are answered. */
  readonly healthCheckNodePortProbes: { readonly port: number; readonly fromLoadBalancer: readonly Attempt[]; readonly control: readonly Attempt[] };
  /**
   * Packets counted over the whole drive by the rule that matches the
   * NodePort: iptables mode the service's KUBE-NODEPORTS rule, ipvs mode the
   * KUBE-NODE-PORT rule on KUBE-NODE-PORT-LOCAL-TCP. Absent in nft mode.
   */
  readonly nodePortPackets?: { readonly before: number; readonly after: number };
  /** Host-wide in_martian_src, before and after the whole drive. */
  readonly martianSources: { readonly before: number; readonly after: number };
  /** Counters around each phase: the LB-sourced probes run first, alone, then the control probes. */
  readonly phases: { readonly healthChecks: LbHealthCheckPhase; readonly control: LbHealthCheckPhase };
  /** `conntrack -L` lines on node-1 after the drive: from the LB address (none: dropped SYNs are never confirmed) and from the control source. */
  readonly conntrack: { readonly fromLoadBalancer: readonly string[]; readonly fromControl: readonly string[] };
}

export interface LbHealthCheckDriveOptions {
  /** Called once the LB-sourced probes are running; that phase also waits for it (a capture takes snapshots here). */
  readonly duringHealthChecks?: () => Promise<void>;
}

const WATCHED_CHAINS = new Set(['KUBE-SERVICES', 'KUBE-NODE-PORT', 'KUBE-NODEPORTS']);

async function watchedCounters(lab: Lab, ns: string): Promise<RuleCounter[]> {
  const [nat, filter] = await Promise.all([iptablesCounters(lab, ns, 'nat'), iptablesCounters(lab, ns, 'filter')]);
  return [...nat, ...filter].filter((r) => WATCHED_CHAINS.has(r.chain));
}

function counterDeltas(before: readonly RuleCounter[], after: readonly RuleCounter[]): RuleCounterDelta[] {
  return after.map((a) => ({
    table: a.table,
    chain: a.chain,
    rule: a.rule,
    before: before.find((b) => b.table === a.table && b.rule === a.rule)?.packets ?? 0,
    after: a.packets,
  }));
}

/**
 * Seed 003. An externalTrafficPolicy=Local LoadBalancer Service on a node
 * whose kube-proxy runs in IPVS mode (1.11+ binds the LB ingress IP on
 * kube-ipvs0, PR 63066), so the LB IP sits in node-1's `local` table. The LB
 * (Tencent CLB style) sends its health checks FROM the LB IP. node-1 runs
 * each SYN through nat PREROUTING (KUBE-SERVICES → addrtype LOCAL →
 * KUBE-NODE-PORT: the counters rise), then the routing decision finds a local
 * source arriving on eth0 with accept_local=0: a martian, dropped before
 * INPUT (no filter counter moves) and before conntrack confirms anything.
 *
 * In 'iptables' or 'nft' mode (opts.proxyMode) the node gets that mode's
 * rules plus the LB IP on kube-ipvs0: a combination no kube-proxy writes,
 * kept to compare with the earlier lab.
 */
export function lbHealthCheckDropped(lab: Lab, opts: ScenarioOptions = {}): Scenario<LbHealthCheckFacts, LbHealthCheckResult, LbHealthCheckDriveOptions> {
  const c = holder();
  const mode = opts.proxyMode ?? 'ipvs';
  const lbIp = '198.18.100.20';
  const svc: ServiceModel = {
    namespace: 'hc',
    name: 'web',
    portName: 'http',
    protocol: 'tcp',
    clusterIP: '198.18.64.20',
    port: 80,
    nodePort: 31199,
    loadBalancerIP: lbIp,
    externalTrafficPolicy: 'Local',
    healthCheckNodePort: 32000,
    endpoints: [{ ip: podIpOf(1, 0), port: 8080, nodeName: 'node-1', ready: true }],
  };
  const nodePort = 31199;
  const hcPort = 32000;
  const sport = 40000;
  const facts: LbHealthCheckFacts = {
    scenario: 'lbHealthCheckDropped',
    node: 'node-1',
    nodeIp: nodeIpOf(1),
    tuple: { protocol: 'tcp', src: lbIp, sport, dst: nodeIpOf(1), dport: nodePort },
    endpoint: { pod: 'web', node: 'node-1', ip: podIpOf(1, 0), port: 8080 },
    service: serviceFact(svc),
    loadBalancer: { ip: lbIp, port: 80, targets: [{ node: 'node-1', nodeIp: nodeIpOf(1), nodePort }] },
    proxyMode: mode,
    localRoute: `local ${lbIp} dev kube-ipvs0 proto kernel scope host src ${lbIp}`,
    ...(mode === 'ipvs' ? { clusterIpLocalRoute: `local ${svc.clusterIP} dev kube-ipvs0 proto kernel scope host src ${svc.clusterIP}` } : {}),
    sysctls: { 'net.ipv4.conf.all.accept_local': '0', 'net.ipv4.conf.eth0.accept_local': '0', 'net.ipv4.conf.eth0.rp_filter': '2', 'net.ipv4.conf.all.log_martians': '1' },
    controlSource: ROUTER_IP,
    healthCheckNodePort: hcPort,
  };
  return {
    name: 'lbHealthCheckDropped',
    facts,
    lab,
    cluster: c.get,
    async setup() {
      const cluster = await buildCluster(lab, { nodes: [{ name: 'node-1', proxyMode: mode }], pods: [{ name: 'web', node: 'node-1' }] });
      if (opts.kubeApi) cluster.publishTo(opts.kubeApi);
      c.set(cluster);
      await Promise.all([
        startServer(lab, cluster.pod('web').ns, { kind: 'tcp', port: 8080, name: 'web' }),
        // kube-proxy's health-check server (an HTTP server in kube-proxy itself, in every mode).
        startServer(lab, 'node-1', { kind: 'tcp', port: hcPort, name: 'kube-proxy-healthcheck' }),
      ]);
      // IPVS mode binds the ClusterIP and the LB IP on kube-ipvs0 itself.
      await cluster.applyServices({ services: [svc] });
      if (mode !== 'ipvs') await cluster.bindKubeIpvs0('node-1', lbIp);
      // Martian sources are logged to the kernel log (destination after DNAT).
      await lab.sysctls('node-1', { 'net.ipv4.conf.all.log_martians': 1, 'net.ipv4.conf.eth0.log_martians': 1 });
      await cluster.addLoadBalancer(lbIp, 80, facts.loadBalancer.targets);
    },
    async drive(driveOpts: LbHealthCheckDriveOptions = {}) {
      const cluster = c.get();
      const node = cluster.node('node-1');
      const router = cluster.router.ns;
      const nodePortRule = (rules: readonly RuleCounter[]): number | undefined =>
        rules.find((r) =>
          node.proxyMode === 'ipvs'
            ? r.table === 'nat' && r.chain === 'KUBE-NODE-PORT' && r.rule.includes('--match-set KUBE-NODE-PORT-LOCAL-TCP ')
            : r.table === 'nat' && r.chain === 'KUBE-NODEPORTS' && r.rule.includes(`--dport ${nodePort}`),
        )?.packets;
      const phase = async (run: () => Promise<void>): Promise<LbHealthCheckPhase & { countersBefore: RuleCounter[]; countersAfter: RuleCounter[] }> => {
        const countersBefore = await watchedCounters(lab, node.ns);
        const martiansBefore = await readMartianSourceCount(lab, node.ns);
        await run();
        const countersAfter = await watchedCounters(lab, node.ns);
        const martiansAfter = await readMartianSourceCount(lab, node.ns);
        return { ruleCounters: counterDeltas(countersBefore, countersAfter), martianSources: { before: martiansBefore, after: martiansAfter }, countersBefore, countersAfter };
      };

      // Phase 1: the LB's health checks, from its own address. Two probes of
      // 1.5 s to each port: a SYN plus its retransmission at 1 s, each.
      let healthChecks: Attempt[] = [];
      let hcFromLb: Attempt[] = [];
      const lbPhase = await phase(async () => {
        const probes = Promise.all([
          runClient(lab, router, { mode: 'tcp-syn', host: node.ip, port: nodePort, sport, src: lbIp, count: 2, timeoutMs: 1_500 }),
          runClient(lab, router, { mode: 'tcp-syn', host: node.ip, port: hcPort, sport: sport + 2, src: lbIp, count: 2, timeoutMs: 1_500 }),
        ]);
        const [probed] = await Promise.all([probes, driveOpts.duringHealthChecks?.()]);
        [healthChecks, hcFromLb] = probed;
      });
      // Phase 2: the control, from the router's own address.
      let control: Attempt[] = [];
      let hcControl: Attempt[] = [];
      const controlPhase = await phase(async () => {
        [control, hcControl] = await Promise.all([
          runClient(lab, router, { mode: 'tcp-syn', host: node.ip, port: nodePort, sport: sport + 1, src: ROUTER_IP, count: 2, timeoutMs: 1_500 }),
          runClient(lab, router, { mode: 'tcp-syn', host: node.ip, port: hcPort, sport: sport + 3, src: ROUTER_IP, count: 2, timeoutMs: 1_500 }),
        ]);
      });
      const [fromLoadBalancer, fromControl] = await Promise.all([conntrackList(lab, node.ns, ['-s', lbIp]), conntrackList(lab, node.ns, ['-s', ROUTER_IP])]);
      const beforePackets = nodePortRule(lbPhase.countersBefore);
      const afterPackets = nodePortRule(controlPhase.countersAfter);
      return {
        proxyMode: node.proxyMode,
        healthChecks,
        control,
        healthCheckNodePortProbes: { port: hcPort, fromLoadBalancer: hcFromLb, control: hcControl },
        ...(beforePackets !== undefined && afterPackets !== undefined ? { nodePortPackets: { before: beforePackets, after: afterPackets } } : {}),
        martianSources: { before: lbPhase.martianSources.before, after: controlPhase.martianSources.after },
        phases: {
          healthChecks: { ruleCounters: lbPhase.ruleCounters, martianSources: lbPhase.martianSources },
          control: { ruleCounters: controlPhase.ruleCounters, martianSources: controlPhase.martianSources },
        },
        conntrack: { fromLoadBalancer, fromControl },
      };
    },
  };
}

// --- (c, d) UDP Service rollout, with and without conntrack cleanup (seed 002's conntrack side)

export interface UdpRolloutOptions extends ScenarioOptions {
  /**
   * cleanRollout: how long after the new rules are applied kube-proxy's
   * conntrack cleanup runs. kube-proxy runs it at the end of the same sync,
   * right after iptables-restore (or the nft transaction); the default, 1.2 s,
   * stretches that to about one sample of a 1 Hz agent, so the agent sees the
   * rules changed while the stale entry still exists.
   */
  readonly cleanupDelayMs?: number;
}

export interface UdpRolloutFacts extends ScenarioFacts {
  readonly scenario: 'udpRolloutStaleConntrack' | 'cleanRollout';
  readonly clientPod: string;
  /** The pod replaced by the rollout (its namespace is deleted). */
  readonly oldEndpoint: EndpointFact;
  /** The pod that replaces it. */
  readonly newEndpoint: EndpointFact;
  /** Every attempt in milliseconds. */
  readonly intervalMs: number;
  /** Whether kube-proxy's conntrack cleanup follows its sync ('after-sync', cleanRollout) or never runs ('skipped'). */
  readonly kubeProxyCleanup: 'after-sync' | 'skipped';
  /** cleanRollout: the delay between the rules being applied and the cleanup. */
  readonly cleanupDelayMs?: number;
}

export interface UdpRolloutCleanup {
  /** Facts' kubeProxyCleanup: 'after-sync' in the clean rollout, 'skipped' in the faulty one. */
  readonly kubeProxy: 'after-sync' | 'skipped';
  /** Whether a cleanup ran during the drive (kube-proxy's, or the faulty rollout's late one). */
  readonly ran: boolean;
  /** It was the faulty rollout's late cleanup, after the pinned period. */
  readonly late?: boolean;
  /** The planned delay after the rules (clean rollout). */
  readonly delayMs?: number;
  /** When it started (ms since epoch); equals UdpRolloutResult.cleanupAt. */
  readonly at?: number;
  /** Conntrack entries deleted, summed over the nodes. */
  readonly deleted?: number;
}

export interface UdpRolloutResult {
  /** Every attempt of the fixed-source-port client, in order. */
  readonly attempts: readonly Attempt[];
  /** When the new rules were applied on every node (ms since epoch). */
  readonly rolloutAt: number;
  /** When the old pod's namespace was gone (its address blackholed from then on). */
  readonly oldPodRemovedAt: number;
  /** When kube-proxy's conntrack cleanup started, if it ran. */
  readonly cleanupAt?: number;
  readonly cleanup: UdpRolloutCleanup;
}

export interface UdpRolloutDriveOptions {
  /** Faulty rollout only: how long the client stays pinned before anything else happens (default 3000 ms). */
  readonly pinnedMs?: number;
  /** Faulty rollout only: run a cleanup late, after the pinned period, to show the client then moves (default true). */
  readonly lateCleanup?: boolean;
  /** Faulty rollout only: called once the client is pinned (three unanswered attempts after the rollout); the pinned period lasts at least until it resolves. */
  readonly onPinned?: () => Promise<void>;
  /** Clean rollout only: called once the new rules are applied, before the cleanup (which waits for it and for the delay). */
  readonly onRulesApplied?: () => Promise<void>;
}

function udpRollout(lab: Lab, name: 'udpRolloutStaleConntrack' | 'cleanRollout', opts: UdpRolloutOptions): Scenario<UdpRolloutFacts, UdpRolloutResult, UdpRolloutDriveOptions> {
  const c = holder();
  // node-1: dns-client (.1.10); node-2: coredns-a (.2.10), coredns-b (.2.11).
  const oldEndpoint: EndpointFact = { pod: 'coredns-a', node: 'node-2', ip: podIpOf(2, 0), port: 53 };
  const newEndpoint: EndpointFact = { pod: 'coredns-b', node: 'node-2', ip: podIpOf(2, 1), port: 53 };
  const base = {
    namespace: 'kube-system',
    name: 'kube-dns',
    portName: 'dns',
    protocol: 'udp',
    clusterIP: '198.18.64.53',
    port: 53,
    externalTrafficPolicy: 'Cluster',
  } as const;
  const before: ServiceModel = { ...base, endpoints: [{ ip: oldEndpoint.ip, port: 53, nodeName: 'node-2', ready: true }] };
  const after: ServiceModel = { ...base, endpoints: [{ ip: newEndpoint.ip, port: 53, nodeName: 'node-2', ready: true }] };
  const sport = 41053;
  const intervalMs = 200;
  const clean = name === 'cleanRollout';
  const cleanupDelayMs = opts.cleanupDelayMs ?? 1_200;
  const facts: UdpRolloutFacts = {
    scenario: name,
    node: 'node-1',
    nodeIp: nodeIpOf(1),
    tuple: { protocol: 'udp', src: podIpOf(1, 0), sport, dst: base.clusterIP, dport: 53 },
    endpoint: clean ? newEndpoint : oldEndpoint,
    service: serviceFact(before),
    clientPod: 'dns-client',
    oldEndpoint,
    newEndpoint,
    intervalMs,
    kubeProxyCleanup: clean ? 'after-sync' : 'skipped',
    ...(clean ? { cleanupDelayMs } : {}),
  };

  // kube-proxy's conntrack.CleanStaleEntries on every node: returns how many entries went.
  const cleanupEverywhere = async (cluster: Cluster): Promise<number> => {
    const counts = await Promise.all(cluster.nodes.map((n) => kubeProxyConntrackCleanup(lab, n.ns, { clusterIP: base.clusterIP, oldEndpointIp: oldEndpoint.ip })));
    return counts.reduce((a, b) => a + b, 0);
  };

  return {
    name,
    facts,
    lab,
    cluster: c.get,
    async setup() {
      const mode = opts.proxyMode ?? 'iptables';
      if (mode === 'ipvs') throw new Error(`${name} needs a proxy mode that forwards Service traffic (iptables or nft): this kernel has no IPVS`);
      const cluster = await buildCluster(lab, {
        nodes: [{ name: 'node-1', proxyMode: mode }, { name: 'node-2', proxyMode: mode }],
        pods: [{ name: 'dns-client', node: 'node-1' }, { name: oldEndpoint.pod, node: 'node-2' }, { name: newEndpoint.pod, node: 'node-2' }],
      });
      if (opts.kubeApi) cluster.publishTo(opts.kubeApi);
      c.set(cluster);
      await Promise.all([
        startServer(lab, cluster.pod(oldEndpoint.pod).ns, { kind: 'udp', port: 53, name: oldEndpoint.pod }),
        startServer(lab, cluster.pod(newEndpoint.pod).ns, { kind: 'udp', port: 53, name: newEndpoint.pod }),
      ]);
      await cluster.applyServices({ services: [before] });
    },
    async drive(driveOpts: UdpRolloutDriveOptions = {}) {
      const cluster = c.get();
      const pinnedMs = driveOpts.pinnedMs ?? 3_000;
      // Enough attempts for every phase; the client is stopped as soon as the story is told.
      const client = startClient(lab, cluster.pod('dns-client').ns, { mode: 'udp-client', host: base.clusterIP, port: 53, sport, count: 150, intervalMs });
      try {
        await client.waitFor(`an answer from ${oldEndpoint.pod}`, (a) => a.status === 'ok' && a.pod === oldEndpoint.pod, 5_000);
        // The rollout as kube-proxy sees it on every node: the endpoint set
        // changes and the rules are re-rendered (old KUBE-SEP chain deleted;
        // in nft mode the old endpoint chain is left behind, flushed).
        await cluster.applyServices({ services: [after] });
        const rolloutAt = Date.now();
        if (clean) {
          // kube-proxy's cleanup, after its sync. The client keeps sending
          // meanwhile; its entry still DNATs to the old pod, which is still
          // running (terminating), so it is still answered by it.
          await Promise.all([sleep(cleanupDelayMs - (Date.now() - rolloutAt)), driveOpts.onRulesApplied?.()]);
          // Taken before the cleanup runs: a datagram sent while it runs may already reach the new pod.
          const cleanupAt = Date.now();
          const deleted = await cleanupEverywhere(cluster);
          // The kubelet deletes the pod last.
          await cluster.removePod(oldEndpoint.pod);
          const oldPodRemovedAt = Date.now();
          await client.waitFor(`an answer from ${newEndpoint.pod} after the cleanup`, (a) => a.status === 'ok' && a.pod === newEndpoint.pod && a.at >= cleanupAt, 5_000);
          await sleep(4 * intervalMs);
          return {
            attempts: client.attempts(),
            rolloutAt,
            oldPodRemovedAt,
            cleanupAt,
            cleanup: { kubeProxy: 'after-sync', ran: true, delayMs: cleanupDelayMs, at: cleanupAt, deleted },
          };
        }
        // The faulty rollout: no cleanup; the pod's namespace goes.
        await cluster.removePod(oldEndpoint.pod);
        const oldPodRemovedAt = Date.now();
        // Pinned: the entry created before the rollout still DNATs every datagram to the deleted pod.
        const lastSeq = client.attempts().at(-1)?.seq ?? 0;
        await client.waitFor('three attempts after the rollout', (a) => a.seq >= lastSeq + 3, 5_000);
        const pinnedSince = Date.now();
        await driveOpts.onPinned?.();
        await sleep(Math.max(0, pinnedMs - (Date.now() - pinnedSince)));
        if (!(driveOpts.lateCleanup ?? true)) return { attempts: client.attempts(), rolloutAt, oldPodRemovedAt, cleanup: { kubeProxy: 'skipped', ran: false } };
        // Taken before the cleanup runs: datagrams sent while it runs may already reach the new pod.
        const cleanupAt = Date.now();
        const deleted = await cleanupEverywhere(cluster);
        await client.waitFor(`an answer from ${newEndpoint.pod} after the late cleanup`, (a) => a.status === 'ok' && a.pod === newEndpoint.pod && a.at >= cleanupAt, 5_000);
        return { attempts: client.attempts(), rolloutAt, oldPodRemovedAt, cleanupAt, cleanup: { kubeProxy: 'skipped', ran: true, late: true, at: cleanupAt, deleted } };
      } finally {
        await client.process.stop();
      }
    },
  };
}

/**
 * A UDP Service (kube-dns) with one endpoint; a client with a fixed source
 * port (as a DNS stub resolver pins one) sends through the ClusterIP every
 * 200 ms. The rollout replaces coredns-a with coredns-b: rules re-rendered,
 * coredns-a deleted, but kube-proxy's conntrack cleanup does NOT run. The
 * client's conntrack entry on node-1 keeps DNATing to coredns-a's address
 * (blackholed on node-2) and, refreshed by every datagram, never expires:
 * pinned until the entry is deleted. drive() deletes it late by default and
 * shows the client then reaching coredns-b. iptables or nft mode.
 */
export function udpRolloutStaleConntrack(lab: Lab, opts: UdpRolloutOptions = {}): Scenario<UdpRolloutFacts, UdpRolloutResult, UdpRolloutDriveOptions> {
  return udpRollout(lab, 'udpRolloutStaleConntrack', opts);
}

/**
 * The same rollout done right, with kube-proxy's timing: the new rules go in,
 * and `cleanupDelayMs` later (default 1.2 s) kube-proxy's `conntrack -D` runs
 * on every node; until then the client still reaches coredns-a (not yet
 * deleted), and from then on coredns-b. Then coredns-a's pod goes. iptables or nft mode.
 */
export function cleanRollout(lab: Lab, opts: UdpRolloutOptions = {}): Scenario<UdpRolloutFacts, UdpRolloutResult, UdpRolloutDriveOptions> {
  return udpRollout(lab, 'cleanRollout', opts);
}
