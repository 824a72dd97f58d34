// Proves, on the real kernel, that the lab's cluster carries Service traffic
// through kube-proxy's rules and that each seed's failure really happens.
// Needs root: fails (never skips) with what is missing.
import { execFileSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildCluster, type Cluster } from './cluster.ts';
import { conntrackList, iptablesEndpointChain, iptablesServiceChains, nftServiceChains, type ProxyModel, type ServiceModel } from './kube-proxy.ts';
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

describe('lbHealthCheckDropped: LB health checks sourced from an LB IP bound on kube-ipvs0 (seed 003)', () => {
  const scenario = lbHealthCheckDropped(newLab());
  const f = scenario.facts;
  let result: LbHealthCheckResult;

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive();
  });
  afterAll(() => scenario.lab.teardown());

  it('gets no reply to health checks from the LB address, while the same probe from the router is answered', () => {
    expect(result.healthChecks.map((a) => a.status)).toEqual(['timeout', 'timeout']);
    expect(result.control.map((a) => a.status)).toEqual(['ok', 'ok']);
  });

  it("NATs every probe on the node: the service's NodePort rule counter rises", () => {
    const counted = (result.nodePortPackets?.after ?? 0) - (result.nodePortPackets?.before ?? 0);
    // Every dropped SYN (at least one per probe, plus retransmissions) and every answered control SYN.
    expect(counted).toBeGreaterThanOrEqual(result.healthChecks.length + result.control.length);
  });

  it('leaves no conntrack entry from the LB address on the node, although the node tracks the control probes', async () => {
    expect(await conntrackList(scenario.lab, f.node, ['-s', f.loadBalancer.ip])).toEqual([]);
    expect(await conntrackList(scenario.lab, f.node, ['-s', f.controlSource])).not.toEqual([]);
  });

  it('has the LB address in the local table on kube-ipvs0 and the sysctls that make its probes martians', async () => {
    const local = (await scenario.lab.ip(f.node, ['route', 'show', 'table', 'local'])).stdout.split('\n').map((l) => l.trim());
    expect(local).toContain(f.localRoute);
    const link = (await scenario.lab.ip(f.node, ['link', 'show', 'kube-ipvs0'])).stdout;
    expect(link).toContain('NOARP');
    expect(link).toContain('state DOWN');
    for (const [key, value] of Object.entries(f.sysctls)) {
      expect((await scenario.lab.exec(f.node, ['sysctl', '-n', key])).stdout.trim(), key).toBe(value);
    }
  });

  it('counts the dropped probes as martian sources', () => {
    expect(result.martianSources.after).toBeGreaterThan(result.martianSources.before);
  });
});

describe('udpRolloutStaleConntrack: a UDP rollout without conntrack cleanup (seed 002, conntrack side)', () => {
  const scenario = udpRolloutStaleConntrack(newLab());
  const f = scenario.facts;
  let result: UdpRolloutResult;
  let pinnedEntry: string | undefined;
  let pinnedNat = '';

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive({
      pinnedMs: 2_500,
      onPinned: async () => {
        pinnedEntry = entryFor(await conntrackList(scenario.lab, f.node, ['-p', 'udp']), f.tuple);
        pinnedNat = (await scenario.lab.exec(f.node, ['iptables-save', '-t', 'nat'])).stdout;
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

  it("still DNATs the flow to the removed pod in node-1's conntrack while the new rules point elsewhere", () => {
    expect(pinnedEntry).toContain(`src=${f.oldEndpoint.ip} dst=${f.tuple.src} sport=53 dport=${f.tuple.sport}`);
    const svc = { namespace: f.service.namespace, name: f.service.name, portName: f.service.portName, protocol: f.service.protocol };
    expect(pinnedNat).not.toContain(iptablesEndpointChain(svc, f.oldEndpoint));
    expect(pinnedNat).toContain(`-j DNAT --to-destination ${f.newEndpoint.ip}:53`);
  });

  it("moves to the new pod once kube-proxy's conntrack cleanup deletes the entry", async () => {
    const after = result.attempts.filter((a) => a.at >= (result.cleanupAt ?? Infinity));
    expect(after.some((a) => a.status === 'ok' && a.pod === f.newEndpoint.pod)).toBe(true);
    expect(after.filter((a) => a.pod === f.oldEndpoint.pod)).toEqual([]);
    const entry = entryFor(await conntrackList(scenario.lab, f.node, ['-p', 'udp']), f.tuple);
    expect(entry).toContain(`src=${f.newEndpoint.ip} dst=${f.tuple.src} sport=53 dport=${f.tuple.sport}`);
  });
});

describe('cleanRollout: the same rollout with the conntrack cleanup kube-proxy runs', () => {
  const scenario = cleanRollout(newLab());
  const f = scenario.facts;
  let result: UdpRolloutResult;

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    result = await scenario.drive();
  });
  afterAll(() => scenario.lab.teardown());

  it('moves the client to the new pod at once', async () => {
    const cleanupAt = result.cleanupAt ?? Infinity;
    // The one datagram in flight while the entry was deleted may be lost; nothing after it is.
    const after = result.attempts.filter((a) => a.at > cleanupAt);
    expect(after.length).toBeGreaterThanOrEqual(3);
    expect(after.slice(1).map((a) => `${a.status}:${a.pod ?? ''}`)).toEqual(after.slice(1).map(() => `ok:${f.newEndpoint.pod}`));
    const entry = entryFor(await conntrackList(scenario.lab, f.node, ['-p', 'udp']), f.tuple);
    expect(entry).toContain(`src=${f.newEndpoint.ip} dst=${f.tuple.src} sport=53 dport=${f.tuple.sport}`);
  });
});

describe('teardown', () => {
  it('leaves no namespace of any lab behind', async () => {
    for (const lab of labs) await lab.teardown();
    const mine = ipNetnsList().filter((ns) => labs.some((lab) => ns.startsWith(`${lab.prefix}-`)));
    expect(mine).toEqual([]);
  });
});
