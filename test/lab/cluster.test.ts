// Proves, on the real kernel, that the lab's cluster carries Service traffic
// through kube-proxy's rules and that each seed's failure really happens.
// Needs root: fails (never skips) with what is missing.
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCluster, type Cluster } from './cluster.ts';
import { conntrackList, iptablesEndpointChain, iptablesServiceChains, nftEndpointChain, nftServiceChains, type ProxyModel, type ServiceModel } from './kube-proxy.ts';
import { assertLabPrerequisites, Lab } from './netns.ts';
import {
  cleanRollout,
  lbHairpin,
  lbHealthCheckDropped,
  udpRolloutStaleConntrack,
  type LbHairpinResult,
  type LbHealthCheckResult,
  type UdpRolloutResult,
} from './scenarios.ts';
import { runClient, startServer, type Attempt } from './traffic.ts';

const labs: Lab[] = [];
function newLab(): Lab {
  const lab = new Lab();
  labs.push(lab);
  return lab;
}

function ipNetnsList(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

// A conntrack -L line for this original tuple (whatever its state).
function entryFor(lines: readonly string[], t: { src: string; dst: string; sport: number; dport: number }): string | undefined {
  return lines.find((l) => l.includes(`src=${t.src} dst=${t.dst} sport=${t.sport} dport=${t.dport} `));
}

it('runs as root with the tools and network namespaces the lab needs', () => {
  assertLabPrerequisites();
});

describe('ClusterIP Services through kube-proxy rules (iptables on node-1, nftables on node-2)', () => {
  const lab = newLab();
  let cluster: Cluster;
  const web: ServiceModel = {
    namespace: 'default', name: 'web', portName: 'http', protocol: 'tcp', clusterIP: '198.18.64.10', port: 80, externalTrafficPolicy: 'Cluster',
    endpoints: [
      { ip: '198.19.1.11', port: 8080, nodeName: 'node-1', ready: true },
      { ip: '198.19.2.11', port: 8080, nodeName: 'node-2', ready: true },
    ],
  };
  const echo: ServiceModel = {
    namespace: 'default', name: 'echo', portName: 'dns', protocol: 'udp', clusterIP: '198.18.64.53', port: 53, externalTrafficPolicy: 'Cluster',
    endpoints: [
      { ip: '198.19.1.11', port: 5353, nodeName: 'node-1', ready: true },
      { ip: '198.19.2.11', port: 5353, nodeName: 'node-2', ready: true },
    ],
  };
  const model: ProxyModel = { services: [web, echo] };

  beforeAll(async () => {
    assertLabPrerequisites();
    cluster = await buildCluster(lab, {
      nodes: [{ name: 'node-1', proxyMode: 'iptables' }, { name: 'node-2', proxyMode: 'nft' }],
      pods: [
        { name: 'client-1', node: 'node-1' }, { name: 'web-a', node: 'node-1' },
        { name: 'client-2', node: 'node-2' }, { name: 'web-b', node: 'node-2' },
      ],
    });
    expect([cluster.pod('web-a').ip, cluster.pod('web-b').ip]).toEqual(['198.19.1.11', '198.19.2.11']);
    await Promise.all(
      ['web-a', 'web-b'].flatMap((pod) => [
        startServer(lab, cluster.pod(pod).ns, { kind: 'tcp', port: 8080, name: pod }),
        startServer(lab, cluster.pod(pod).ns, { kind: 'udp', port: 5353, name: pod }),
      ]),
    );
    await cluster.applyServices(model);
  });
  afterAll(() => lab.teardown());

  it.each([
    ['client-1', 'iptables'],
    ['client-2', 'nftables'],
  ])('TCP from %s to the ClusterIP reaches both endpoints through the %s rules', async (client) => {
    const attempts = await runClient(lab, cluster.pod(client).ns, { mode: 'tcp-client', host: web.clusterIP, port: 80, count: 20, timeoutMs: 2_000 });
    expect(attempts.map((a) => a.status)).toEqual(Array<string>(20).fill('ok'));
    // 20 random picks between two endpoints all landing on one: probability 2^-19.
    expect(new Set(attempts.map((a) => a.pod))).toEqual(new Set(['web-a', 'web-b']));
  });

  it.each([
    ['client-1', 'node-1'],
    ['client-2', 'node-2'],
  ])('UDP from %s with a fixed source port is answered, always by the endpoint its conntrack entry on %s names', async (client, node) => {
    const attempts = await runClient(lab, cluster.pod(client).ns, { mode: 'udp-client', host: echo.clusterIP, port: 53, sport: 40053, count: 5, intervalMs: 100 });
    expect(attempts.map((a) => a.status)).toEqual(['ok', 'ok', 'ok', 'ok', 'ok']);
    const pods = new Set(attempts.map((a) => a.pod));
    expect(pods.size).toBe(1);
    const pod = cluster.pod([...pods][0] ?? '');
    const entry = entryFor(await conntrackList(lab, node, ['-p', 'udp']), { src: cluster.pod(client).ip, dst: echo.clusterIP, sport: 40053, dport: 53 });
    expect(entry).toContain(`src=${pod.ip} dst=${cluster.pod(client).ip} sport=5353 dport=40053`);
  });

  it("holds kube-proxy's chains in each node's own tables", async () => {
    const saved = (await lab.exec('node-1', ['iptables-save', '-t', 'nat'])).stdout;
    expect(saved).toContain(`-A KUBE-SERVICES -d 198.18.64.10/32 -p tcp -m comment --comment "default/web:http cluster IP" -m tcp --dport 80 -j ${iptablesServiceChains(web).svc}`);
    expect(saved).toContain(`-j DNAT --to-destination 198.19.2.11:8080`);
    const nft = (await lab.exec('node-2', ['nft', 'list', 'table', 'ip', 'kube-proxy'])).stdout;
    expect(nft).toContain(`chain ${nftServiceChains(web).service} {`);
    expect(nft).toMatch(/198\.18\.64\.53 \. udp \. 53 : goto service-\w{8}-default\/echo\/udp\/dns/);
    // Neither node has the other mode's rules.
    expect((await lab.exec('node-2', ['iptables-save', '-t', 'nat'])).stdout).not.toContain('KUBE-SERVICES');
    expect((await lab.exec('node-1', ['nft', 'list', 'tables'])).stdout).not.toContain('kube-proxy');
  });
});

describe('lbHairpin: a pod whose LB connection is sent back to its own node (seeds 000, 001)', () => {
  const scenario = lbHairpin(newLab());
  const f = scenario.facts;
  let result: LbHairpinResult;

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive();
  });
  afterAll(() => scenario.lab.teardown());

  it('times out, while the same LB address answers a pod on another node', () => {
    expect(result.hairpin.map((a) => a.status)).toEqual(['timeout']);
    expect(result.fromOtherNode.map((a) => `${a.status}:${a.pod ?? ''}`)).toEqual(['ok:nginx', 'ok:nginx', 'ok:nginx']);
  });

  it("leaves node-1's conntrack as seed 000 shows it: the SYN to the LB unreplied, the NodePort flow DNATed and reset", async () => {
    const lines = await conntrackList(scenario.lab, f.node, ['-p', 'tcp']);
    const toLb = entryFor(lines, { src: f.tuple.src, dst: f.tuple.dst, sport: f.tuple.sport, dport: f.tuple.dport });
    expect(toLb).toMatch(/SYN_SENT .*\[UNREPLIED\]/);
    const nodePort = entryFor(lines, { src: f.natTuple.src, dst: f.natTuple.dst, sport: f.natTuple.sport, dport: f.natTuple.dport });
    // Reply tuple: the endpoint answering the node's masqueraded address; the pod's RST closed it.
    expect(nodePort).toMatch(new RegExp(`^tcp +6 +\\d+ CLOSE src=.* src=${f.endpoint.ip.replace(/\./g, '\\.')} dst=${f.nodeIp.replace(/\./g, '\\.')} sport=80 `));
  });
});

describe('IPVS mode on the real kernel: kube-proxy\'s ipsets, match-set rules and kube-ipvs0', () => {
  const lab = newLab();
  let cluster: Cluster;
  const lb: ServiceModel = {
    namespace: 'hc', name: 'web', portName: 'http', protocol: 'tcp', clusterIP: '198.18.64.20', port: 80, nodePort: 31199, loadBalancerIP: '198.18.100.20',
    externalTrafficPolicy: 'Local', healthCheckNodePort: 32000, endpoints: [{ ip: '198.19.1.10', port: 8080, nodeName: 'node-1', ready: true }],
  };
  const dns: ServiceModel = {
    namespace: 'kube-system', name: 'kube-dns', portName: 'dns', protocol: 'udp', clusterIP: '198.18.64.53', port: 53, nodePort: 30053, externalTrafficPolicy: 'Cluster',
    endpoints: [{ ip: '198.19.1.11', port: 53, nodeName: 'node-1', ready: true }],
  };
  let ipsetSave = '';
  let natSave = '';
  let filterSave = '';
  let localTable: string[] = [];

  beforeAll(async () => {
    assertLabPrerequisites();
    cluster = await buildCluster(lab, { nodes: [{ name: 'node-1', proxyMode: 'ipvs' }], pods: [{ name: 'web', node: 'node-1' }, { name: 'coredns', node: 'node-1' }] });
    await cluster.applyServices({ services: [lb, dns] });
    ipsetSave = (await lab.exec('node-1', ['ipset', 'save'])).stdout;
    natSave = (await lab.exec('node-1', ['iptables-save', '-t', 'nat'])).stdout;
    filterSave = (await lab.exec('node-1', ['iptables-save', '-t', 'filter'])).stdout;
    localTable = (await lab.ip('node-1', ['route', 'show', 'table', 'local'])).stdout.split('\n').map((l) => l.trim());
  });
  afterAll(() => lab.teardown());

  it('holds every Service address in the kernel\'s ipsets (ipset save)', () => {
    const adds = ipsetSave.split('\n').filter((l) => l.startsWith('add '));
    expect(adds.sort()).toEqual([
      'add KUBE-CLUSTER-IP 198.18.64.20,tcp:80',
      'add KUBE-CLUSTER-IP 198.18.64.53,udp:53',
      'add KUBE-HEALTH-CHECK-NODE-PORT 32000',
      'add KUBE-IPVS-IPS 198.18.100.20',
      'add KUBE-IPVS-IPS 198.18.64.20',
      'add KUBE-IPVS-IPS 198.18.64.53',
      'add KUBE-LOAD-BALANCER 198.18.100.20,tcp:80',
      'add KUBE-LOAD-BALANCER-LOCAL 198.18.100.20,tcp:80',
      'add KUBE-LOOP-BACK 198.19.1.10,tcp:8080,198.19.1.10',
      'add KUBE-LOOP-BACK 198.19.1.11,udp:53,198.19.1.11',
      'add KUBE-NODE-PORT-LOCAL-TCP 31199',
      'add KUBE-NODE-PORT-TCP 31199',
      'add KUBE-NODE-PORT-UDP 30053',
    ]);
    expect(ipsetSave).toMatch(/^create KUBE-NODE-PORT-TCP bitmap:port range 0-65535$/m);
    expect(ipsetSave).toMatch(/^create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536\b/m);
  });

  it('holds the match-set rules in iptables-save, and no iptables-mode service chain', () => {
    for (const rule of [
      '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
      '-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER',
      '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ',
      '-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT',
      '-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT',
      '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN',
      '-A KUBE-NODE-PORT -p udp -m comment --comment "Kubernetes nodeport UDP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-UDP dst -j KUBE-MARK-MASQ',
      // iptables-save prints --or-mark 0x00004000 back as --set-xmark.
      '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000',
    ]) expect(natSave.split('\n'), rule).toContain(rule);
    for (const rule of [
      '-A INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER',
      '-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT',
      '-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable',
    ]) expect(filterSave.split('\n'), rule).toContain(rule);
    expect(natSave + filterSave).not.toMatch(/KUBE-(SVC|SEP|EXT|SVL)-|KUBE-NODEPORTS|loadbalancer IP/);
  });

  it('binds the ClusterIPs and the LB IP on a DOWN, NOARP kube-ipvs0, so the kernel has them in its local table', async () => {
    expect(localTable).toContain('local 198.18.64.20 dev kube-ipvs0 proto kernel scope host src 198.18.64.20');
    expect(localTable).toContain('local 198.18.64.53 dev kube-ipvs0 proto kernel scope host src 198.18.64.53');
    expect(localTable).toContain('local 198.18.100.20 dev kube-ipvs0 proto kernel scope host src 198.18.100.20');
    const link = (await lab.ip('node-1', ['link', 'show', 'kube-ipvs0'])).stdout;
    expect(link).toContain('NOARP');
    expect(link).toContain('state DOWN');
  });

  it('renders the virtual servers kube-proxy would have programmed as ipvsadm -Ln text', () => {
    expect(cluster.ipvs('node-1')?.ipvsadm.split('\n')).toEqual([
      'IP Virtual Server version 1.2.1 (size=4096)',
      'Prot LocalAddress:Port Scheduler Flags',
      '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn',
      'TCP  198.18.0.11:31199 rr',
      '  -> 198.19.1.10:8080             Masq    1      0          0         ',
      'TCP  198.18.64.20:80 rr',
      '  -> 198.19.1.10:8080             Masq    1      0          0         ',
      'TCP  198.18.100.20:80 rr',
      '  -> 198.19.1.10:8080             Masq    1      0          0         ',
      'UDP  198.18.0.11:30053 rr',
      '  -> 198.19.1.11:53               Masq    1      0          0         ',
      'UDP  198.18.64.53:53 rr',
      '  -> 198.19.1.11:53               Masq    1      0          0         ',
      '',
    ]);
  });

  it('on the next sync deletes the members and unbinds the addresses of a Service that went away', async () => {
    await cluster.applyServices({ services: [dns] });
    const saved = (await lab.exec('node-1', ['ipset', 'save'])).stdout;
    expect(saved).not.toContain('198.18.100.20');
    expect(saved).not.toContain('31199');
    expect(saved).toContain('add KUBE-CLUSTER-IP 198.18.64.53,udp:53');
    expect(await cluster.kubeIpvs0Addresses('node-1')).toEqual(['198.18.64.53']);
    const nat = (await lab.exec('node-1', ['iptables-save', '-t', 'nat'])).stdout;
    expect(nat).not.toContain('--match-set KUBE-LOAD-BALANCER ');
    // The jumps from the built-in chains are ensured once, not added again.
    expect(nat.split('\n').filter((l) => l === '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES')).toHaveLength(1);
  });
});

describe('lbHealthCheckDropped in IPVS mode: LB health checks sourced from the LB IP that kube-proxy bound on kube-ipvs0 (seed 003)', () => {
  const scenario = lbHealthCheckDropped(newLab());
  const f = scenario.facts;
  let result: LbHealthCheckResult;
  const counter = (phase: 'healthChecks' | 'control', table: string, pred: (rule: string) => boolean): number => {
    const r = result.phases[phase].ruleCounters.find((c) => c.table === table && pred(c.rule));
    if (!r) throw new Error(`no ${table} rule counter for ${phase}`);
    return r.after - r.before;
  };
  const nodePortRule = (rule: string): boolean => rule.includes('--match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN');
  const nodeLocalRule = (rule: string): boolean => rule === '-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT';
  const healthCheckAccept = (rule: string): boolean => rule.includes('--match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT');

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive();
  });
  afterAll(() => scenario.lab.teardown());

  it('builds the node in IPVS mode by default, with no iptables-mode rule for the Service', async () => {
    expect(f.proxyMode).toBe('ipvs');
    expect(result.proxyMode).toBe('ipvs');
    const saved = (await scenario.lab.exec(f.node, ['iptables-save'])).stdout;
    expect(saved).not.toMatch(/KUBE-(SVC|SEP|EXT|SVL|FW)-|KUBE-NODEPORTS|loadbalancer IP/);
    expect(saved).toContain('--match-set KUBE-LOAD-BALANCER dst,dst');
  });

  it('gets no reply to health checks from the LB address, on the NodePort or on the health-check port', () => {
    expect(result.healthChecks.map((a) => a.status)).toEqual(['timeout', 'timeout']);
    expect(result.healthCheckNodePortProbes.fromLoadBalancer.map((a) => a.status)).toEqual(['timeout', 'timeout']);
  });

  it("delivers the control probes locally: the health-check server answers, and the NodePort (no IPVS here) is reset by the node's own TCP stack", () => {
    expect(result.healthCheckNodePortProbes.control.map((a) => a.status)).toEqual(['ok', 'ok']);
    expect(result.control.map((a) => a.status)).toEqual(['refused', 'refused']);
  });

  it('NATs every LB-sourced SYN in PREROUTING (the KUBE-SERVICES and KUBE-NODE-PORT counters rise), but none reaches INPUT', () => {
    // A SYN and its retransmission per probe, each NATed again because it was never confirmed.
    expect(counter('healthChecks', 'nat', nodePortRule)).toBeGreaterThanOrEqual(result.healthChecks.length);
    expect(counter('healthChecks', 'nat', nodeLocalRule)).toBeGreaterThanOrEqual(result.healthChecks.length + result.healthCheckNodePortProbes.fromLoadBalancer.length);
    expect(counter('healthChecks', 'filter', healthCheckAccept)).toBe(0);
    // The control's packets pass the same nat rules and then the filter rule in INPUT.
    expect(counter('control', 'nat', nodePortRule)).toBeGreaterThanOrEqual(result.control.length);
    expect(counter('control', 'filter', healthCheckAccept)).toBeGreaterThanOrEqual(result.healthCheckNodePortProbes.control.length);
    expect(result.nodePortPackets && result.nodePortPackets.after - result.nodePortPackets.before).toBeGreaterThanOrEqual(result.healthChecks.length + result.control.length);
  });

  it('counts the dropped probes as martian sources', () => {
    const m = result.phases.healthChecks.martianSources;
    expect(m.after).toBeGreaterThan(m.before);
    expect(result.martianSources.after).toBeGreaterThan(result.martianSources.before);
  });

  it('leaves no conntrack entry from the LB address on the node, while the control probes have theirs', () => {
    expect(result.conntrack.fromLoadBalancer).toEqual([]);
    expect(result.conntrack.fromControl.some((l) => l.includes(`src=${f.controlSource} dst=${f.nodeIp} `) && l.includes(`dport=${f.healthCheckNodePort} `))).toBe(true);
  });

  it('has the LB address and the ClusterIP in the local table on kube-ipvs0, and the sysctls that make the probes martians', async () => {
    const local = (await scenario.lab.ip(f.node, ['route', 'show', 'table', 'local'])).stdout.split('\n').map((l) => l.trim());
    expect(local).toContain(f.localRoute);
    expect(local).toContain(f.clusterIpLocalRoute);
    const link = (await scenario.lab.ip(f.node, ['link', 'show', 'kube-ipvs0'])).stdout;
    expect(link).toContain('NOARP');
    expect(link).toContain('state DOWN');
    for (const [key, value] of Object.entries(f.sysctls)) {
      expect((await scenario.lab.exec(f.node, ['sysctl', '-n', key])).stdout.trim(), key).toBe(value);
    }
  });
});

describe('lbHealthCheckDropped with iptables-mode rules (the earlier lab, for comparison)', () => {
  const scenario = lbHealthCheckDropped(newLab(), { proxyMode: 'iptables' });
  let result: LbHealthCheckResult;

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive();
  });
  afterAll(() => scenario.lab.teardown());

  it('drops the LB-sourced probes the same way, while the control is answered by the pod through the NodePort', () => {
    expect(result.healthChecks.map((a) => a.status)).toEqual(['timeout', 'timeout']);
    expect(result.control.map((a) => a.status)).toEqual(['ok', 'ok']);
    expect(result.conntrack.fromLoadBalancer).toEqual([]);
    const nodePorts = result.phases.healthChecks.ruleCounters.find((c) => c.table === 'nat' && c.chain === 'KUBE-NODEPORTS' && c.rule.includes('--dport 31199'));
    expect((nodePorts?.after ?? 0) - (nodePorts?.before ?? 0)).toBeGreaterThanOrEqual(result.healthChecks.length);
  });
});

// What a node's kube-proxy chains say about the flow, per mode.
async function rulesFor(lab: Lab, node: string, mode: 'iptables' | 'nft'): Promise<string> {
  return mode === 'nft' ? (await lab.exec(node, ['nft', 'list', 'table', 'ip', 'kube-proxy'])).stdout : (await lab.exec(node, ['iptables-save', '-t', 'nat'])).stdout;
}

/** The chain's body in `nft list table` output (its lines between `chain NAME {` and `}`), or undefined when there is no such chain. */
function nftChainBody(listing: string, chain: string): string[] | undefined {
  const lines = listing.split('\n');
  const start = lines.findIndex((l) => l.trim() === `chain ${chain} {`);
  if (start < 0) return undefined;
  const end = lines.findIndex((l, i) => i > start && l.trim() === '}');
  return lines.slice(start + 1, end).map((l) => l.trim()).filter(Boolean);
}

const kubeDns = { namespace: 'kube-system', name: 'kube-dns', portName: 'dns', protocol: 'udp' } as const;

describe.each([['iptables'], ['nft']] as const)('udpRolloutStaleConntrack in %s mode: a UDP rollout without conntrack cleanup (seed 002, conntrack side)', (mode) => {
  const scenario = udpRolloutStaleConntrack(newLab(), { proxyMode: mode });
  const f = scenario.facts;
  let result: UdpRolloutResult;
  let pinnedEntry: string | undefined;
  let pinnedRules = '';

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive({
      pinnedMs: 2_500,
      onPinned: async () => {
        pinnedEntry = entryFor(await conntrackList(scenario.lab, f.node, ['-p', 'udp']), f.tuple);
        pinnedRules = await rulesFor(scenario.lab, f.node, mode);
      },
    });
  });
  afterAll(() => scenario.lab.teardown());

  const between = (from: number, to: number): Attempt[] => result.attempts.filter((a) => a.at > from && a.at < to);

  it('keeps the fixed-source-port client pinned to the removed pod: every datagram after the rollout goes unanswered', () => {
    expect(result.attempts.some((a) => a.status === 'ok' && a.pod === f.oldEndpoint.pod)).toBe(true);
    const pinned = between(result.oldPodRemovedAt, result.cleanupAt ?? Infinity);
    expect(pinned.length).toBeGreaterThanOrEqual(8);
    expect(pinned.filter((a) => a.status === 'ok')).toEqual([]);
  });

  it("still DNATs the flow to the removed pod in node-1's conntrack (kube-proxy's cleanup skipped) while the new rules point elsewhere", () => {
    expect(f.kubeProxyCleanup).toBe('skipped');
    expect(result.cleanup.kubeProxy).toBe('skipped');
    expect(pinnedEntry).toContain(`src=${f.oldEndpoint.ip} dst=${f.tuple.src} sport=53 dport=${f.tuple.sport}`);
    if (mode === 'iptables') {
      expect(pinnedRules).not.toContain(iptablesEndpointChain(kubeDns, f.oldEndpoint));
      expect(pinnedRules).toContain(`-j DNAT --to-destination ${f.newEndpoint.ip}:53`);
    } else {
      // kube-proxy's nftables mode leaves the old endpoint chain behind, flushed.
      expect(nftChainBody(pinnedRules, nftEndpointChain(kubeDns, f.oldEndpoint))).toEqual([]);
      expect(nftChainBody(pinnedRules, nftServiceChains(kubeDns).service)?.join('\n')).toContain(`goto ${nftEndpointChain(kubeDns, f.newEndpoint)}`);
      expect(pinnedRules).toContain(`dnat to ${f.newEndpoint.ip}:53`);
    }
  });

  it('moves to the new pod once the late cleanup deletes the entry', async () => {
    expect(result.cleanup).toMatchObject({ ran: true, late: true });
    expect(result.cleanup.deleted).toBeGreaterThanOrEqual(1);
    const after = result.attempts.filter((a) => a.at >= (result.cleanupAt ?? Infinity));
    expect(after.some((a) => a.status === 'ok' && a.pod === f.newEndpoint.pod)).toBe(true);
    expect(after.filter((a) => a.pod === f.oldEndpoint.pod)).toEqual([]);
    const entry = entryFor(await conntrackList(scenario.lab, f.node, ['-p', 'udp']), f.tuple);
    expect(entry).toContain(`src=${f.newEndpoint.ip} dst=${f.tuple.src} sport=53 dport=${f.tuple.sport}`);
  });
});

describe.each([['iptables'], ['nft']] as const)("cleanRollout in %s mode: the same rollout with kube-proxy's conntrack cleanup, a sample after the sync", (mode) => {
  const scenario = cleanRollout(newLab(), { proxyMode: mode });
  const f = scenario.facts;
  let result: UdpRolloutResult;
  let staleEntry: string | undefined;
  let rulesAtSync = '';

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive({
      onRulesApplied: async () => {
        staleEntry = entryFor(await conntrackList(scenario.lab, f.node, ['-p', 'udp']), f.tuple);
        rulesAtSync = await rulesFor(scenario.lab, f.node, mode);
      },
    });
  });
  afterAll(() => scenario.lab.teardown());

  it('runs the cleanup about one agent sample after the rules were applied, and says so', () => {
    expect(f.kubeProxyCleanup).toBe('after-sync');
    expect(f.cleanupDelayMs).toBe(1_200);
    expect(result.cleanup).toMatchObject({ kubeProxy: 'after-sync', ran: true, delayMs: 1_200 });
    expect(result.cleanup.at).toBe(result.cleanupAt);
    expect((result.cleanupAt ?? 0) - result.rolloutAt).toBeGreaterThanOrEqual(1_150);
    expect(result.cleanup.deleted).toBeGreaterThanOrEqual(1);
  });

  it('between the sync and the cleanup: the rules point to the new pod while the stale entry still DNATs to the old one, which still answers', () => {
    expect(staleEntry).toContain(`src=${f.oldEndpoint.ip} dst=${f.tuple.src} sport=53 dport=${f.tuple.sport}`);
    if (mode === 'iptables') {
      expect(rulesAtSync).not.toContain(iptablesEndpointChain(kubeDns, f.oldEndpoint));
      expect(rulesAtSync).toContain(`-j DNAT --to-destination ${f.newEndpoint.ip}:53`);
    } else {
      expect(nftChainBody(rulesAtSync, nftEndpointChain(kubeDns, f.oldEndpoint))).toEqual([]);
      expect(rulesAtSync).toContain(`dnat to ${f.newEndpoint.ip}:53`);
    }
    const window = result.attempts.filter((a) => a.at > result.rolloutAt + 100 && a.at < (result.cleanupAt ?? 0) - 100);
    expect(window.length).toBeGreaterThanOrEqual(3);
    expect(window.map((a) => `${a.status}:${a.pod ?? ''}`)).toEqual(window.map(() => `ok:${f.oldEndpoint.pod}`));
  });

  it('moves the client to the new pod as soon as the cleanup ran: the stale entry is gone', async () => {
    const cleanupAt = result.cleanupAt ?? Infinity;
    // The one datagram in flight while the entry was deleted may be lost; nothing after it is.
    const after = result.attempts.filter((a) => a.at > cleanupAt);
    expect(after.length).toBeGreaterThanOrEqual(3);
    expect(after.slice(1).map((a) => `${a.status}:${a.pod ?? ''}`)).toEqual(after.slice(1).map(() => `ok:${f.newEndpoint.pod}`));
    const lines = await conntrackList(scenario.lab, f.node, ['-p', 'udp']);
    expect(lines.filter((l) => l.includes(`src=${f.oldEndpoint.ip} `))).toEqual([]);
    expect(entryFor(lines, f.tuple)).toContain(`src=${f.newEndpoint.ip} dst=${f.tuple.src} sport=53 dport=${f.tuple.sport}`);
  });
});

describe('teardown', () => {
  it('leaves no namespace of any lab behind', async () => {
    for (const lab of labs) await lab.teardown();
    const mine = ipNetnsList().filter((ns) => labs.some((lab) => ns.startsWith(`${lab.prefix}-`)));
    expect(mine).toEqual([]);
  });
});
