// Seed 003 as IPVS mode lays out a node: every Service address on a DOWN
// kube-ipvs0 (so in the local table), the classification in ipsets, IPVS-mode
// iptables rules that match sets rather than name Services. Hand-built
// samples, with the negatives beside: ClusterIPs on kube-ipvs0 are never an
// LB finding, accept_local=1 is not the drop, and a healthy node that keeps
// counting NodePort packets with conntrack entries to show is silent.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { NodeSteps, type Outputs } from '../../../helpers/node-steps.ts';

const T0 = Date.parse('2026-11-30T10:00:00Z');
const at = (s: number) => T0 + s * 1000;
const ipsetSave = readFileSync(new URL('../../../fixtures/ipset/lab-ipset-save-kube-proxy-lb-local.txt', import.meta.url), 'utf8');
const CLUSTER_ONLY_IPSET = ipsetSave
  .split('\n')
  .filter((l) => !/^add KUBE-(LOAD-BALANCER|NODE-PORT|HEALTH)/.test(l))
  .join('\n');

const bound = ['10.96.0.10', '10.96.100.10', '10.96.0.1', '198.18.0.100'];
const addrs = (addresses: readonly string[]) =>
  [`2: eth0    inet 192.168.1.10/24 brd 192.168.1.255 scope global eth0\\       valid_lft forever preferred_lft forever`, ...addresses.map((a) => `5: kube-ipvs0    inet ${a}/32 scope global kube-ipvs0\\       valid_lft forever preferred_lft forever`)].join('\n') + '\n';
const routes = (addresses: readonly string[]) =>
  ['default via 192.168.1.1 dev eth0', ...addresses.map((a) => `local ${a} dev kube-ipvs0 table local proto kernel scope host src ${a}`), 'local 192.168.1.10 dev eth0 table local proto kernel scope host src 192.168.1.10'].join('\n') + '\n';
const sysctl = (acceptLocal: 0 | 1) => `net.ipv4.conf.all.accept_local = ${acceptLocal}\nnet.ipv4.conf.eth0.accept_local = 0\nnet.ipv4.conf.eth0.rp_filter = 2\n`;
/** IPVS mode's nat KUBE-NODE-PORT rules (pkg/proxy/ipvs/proxier.go), with the Local NodePort rule's counters. */
const iptables = (packets: number) => `*nat
:KUBE-NODE-PORT - [0:0]
:KUBE-SERVICES - [0:0]
[0:0] -A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
[${packets}:${packets * 60}] -A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
[${packets}:${packets * 60}] -A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN
COMMIT
`;
const rtCache = (martians: number) =>
  `entries  in_hit   in_slow_tot in_slow_mc in_no_route in_brd   in_martian_dst in_martian_src out_hit  out_slow_tot out_slow_mc gc_total gc_ignored gc_goal_miss gc_dst_overflow in_hlist_search out_hlist_search
00000008 00000000 00000143    00000000   00000064    00000000 00000000       ${martians.toString(16).padStart(8, '0')}       00000000 000000b6     00000000    00000000 00000000   00000000     00000000        00000000        00000000
`;
/**
 * /dev/kmsg records as the kernel writes them (test/fixtures/kmsg/), with this
 * test's addresses: 192.168.1.10 is the node, 198.18.0.100 the LB address.
 */
const martianLine = (seq: number, dst: string, src: string) => `4,${seq},${1507371119 + seq},-;IPv4: martian source ${dst} from ${src}, on dev eth0`;
const llLine = (seq: number) => `4,${seq},${1507371129 + seq},-;ll header: 00000000: b2 ce e2 be bf 0f 12 88 b4 1d 2c d3 08 00`;
/** What the ring held before anything in these tests: one old martian from elsewhere, and a link message. */
const RING = [martianLine(2700, '192.168.1.10', '203.0.113.9'), llLine(2701), '6,2702,1507400000,-;vpc0: port 1(v-node-1) entered forwarding state'];
const ring = (...more: string[]) => `${[...RING, ...more].join('\n')}\n`;
const FROM_LB = martianLine(2738, '192.168.1.10', '198.18.0.100');

const node = (o: { ipset?: string; acceptLocal?: 0 | 1; packets?: number; martians?: number; conntrack?: string; addresses?: readonly string[]; kmsg?: string }): Outputs => ({
  ipset: o.ipset ?? ipsetSave,
  addrs: addrs(o.addresses ?? bound),
  routes: routes(o.addresses ?? bound),
  sysctl: sysctl(o.acceptLocal ?? 0),
  iptables: iptables(o.packets ?? 0),
  'rt-cache-stat': rtCache(o.martians ?? 9),
  conntrack: o.conntrack ?? '',
  kmsg: o.kmsg ?? ring(),
});

function run(samples: readonly Outputs[]): NodeSteps {
  const n = new NodeSteps('node-1');
  samples.forEach((o, i) => n.step(at(i), o));
  n.detection.flush(at(3600));
  return n;
}

describe('lb-healthcheck-dropped in IPVS mode', () => {
  it('warns once that the LB address the ipsets name (KUBE-LOAD-BALANCER-LOCAL) is in the local table with accept_local off', () => {
    const found = run([node({}), node({}), node({})]).of('lb-healthcheck-dropped');
    expect(found).toHaveLength(1);
    expect(found[0]).toMatchObject({ severity: 'warning', node: 'node-1', service: 'TCP 198.18.0.100:80', tuple: { src: '198.18.0.100', dst: '192.168.1.10', dport: 31234 } });
    expect(found[0]?.evidence.map((e) => e.raw)).toEqual(expect.arrayContaining([expect.stringContaining('local 198.18.0.100 dev kube-ipvs0'), expect.stringContaining('kube-ipvs0    inet 198.18.0.100/32')]));
  });

  it('reports drops as an error when in_martian_src and the Local NodePort rule count packets no conntrack entry shows', () => {
    const found = run([node({}), node({ packets: 2, martians: 11 }), node({ packets: 4, martians: 13 })]).of('lb-healthcheck-dropped');
    const errors = found.filter((f) => f.severity === 'error');
    expect(errors[0]).toMatchObject({ node: 'node-1', tuple: { src: '198.18.0.100', dport: 31234 }, details: expect.objectContaining({ martianRise: 2, counterRises: 1, conntrackFromLb: false }) });
    expect(errors[0]?.evidence.map((e) => e.source)).toEqual(expect.arrayContaining(['routes', 'addrs', 'sysctl', 'iptables', 'rt-cache-stat']));
    expect(errors[0]?.evidence.find((e) => e.source === 'iptables')?.raw).toContain('KUBE-NODE-PORT-LOCAL-TCP');
  });

  it.each<[string, Outputs[]]>([
    ['ClusterIPs on kube-ipvs0 (KUBE-CLUSTER-IP), with drops counted', [node({ ipset: CLUSTER_ONLY_IPSET, addresses: ['10.96.0.10', '10.96.100.10', '10.96.0.1'] }), node({ ipset: CLUSTER_ONLY_IPSET, addresses: ['10.96.0.10', '10.96.100.10', '10.96.0.1'], martians: 20, packets: 5 })]],
    ['the LB address bound but accept_local=1 on all', [node({ acceptLocal: 1 }), node({ acceptLocal: 1, martians: 20 })]],
  ])('says nothing for %s', (_name, samples) => {
    expect(run(samples).of('lb-healthcheck-dropped')).toEqual([]);
  });

  it('does not call a rise of the host-wide in_martian_src alone a drop: any source on the host moves it (another pod, another netns)', () => {
    const found = run([node({}), node({ martians: 30 }), node({ martians: 55 })]).of('lb-healthcheck-dropped');
    expect(found.filter((f) => f.severity === 'error')).toEqual([]);
    // The latent warning stands, said once, and claims no drop.
    expect(found).toHaveLength(1);
    expect(found[0]?.summary).not.toContain('dropped on');
  });

  it('does not call NodePort traffic a drop when conntrack shows it confirmed (a healthy Local NodePort)', () => {
    const entry = 'ipv4     2 tcp      6 431999 ESTABLISHED src=203.0.113.7 dst=192.168.1.10 sport=51000 dport=30080 packets=4 bytes=220 src=10.244.1.5 dst=203.0.113.7 sport=8080 dport=51000 packets=3 bytes=168 [ASSURED] mark=0 zone=0 use=2\n';
    const found = run([node({ conntrack: entry }), node({ packets: 3, conntrack: entry }), node({ packets: 9, conntrack: entry })]).of('lb-healthcheck-dropped');
    expect(found.filter((f) => f.severity === 'error')).toEqual([]);
  });

  // in_martian_src stays at 9 and no NodePort rule counts in these: the kernel log alone decides.
  it.each<[string, Outputs[], 'error' | null]>([
    ['a `martian source <node> from <LB address>` line logged after the first sample', [node({}), node({ kmsg: ring(FROM_LB, llLine(2739)) })], 'error'],
    ['a martian line from an address that is not bound here', [node({}), node({ kmsg: ring(martianLine(2738, '192.168.1.10', '198.51.100.7')) })], null],
    ['a martian line from the LB address already in the ring at the first sample (its age cannot be told)', [node({ kmsg: ring(FROM_LB) }), node({ kmsg: ring(FROM_LB) }), node({ kmsg: ring(FROM_LB) })], null],
    ['the first read of a ring after the agent could not read it (nothing held before: history of unknown age)', [node({ kmsg: '' }), node({ kmsg: ring(FROM_LB) })], null],
  ])('kernel log: %s', (_name, samples, severity) => {
    const found = run(samples).of('lb-healthcheck-dropped');
    const errors = found.filter((f) => f.severity === 'error');
    if (severity === null) {
      expect(errors).toEqual([]);
      return;
    }
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ tuple: { src: '198.18.0.100' }, details: expect.objectContaining({ kernelLogLines: 1, martianRise: 0, counterRises: 0 }) });
    // Quoted verbatim, at the time the agent read it.
    expect(errors[0]?.evidence.filter((e) => e.source === 'kmsg')).toEqual([{ source: 'kmsg', node: 'node-1', time: new Date(at(1)).toISOString(), raw: FROM_LB }]);
    expect(errors[0]?.summary).toContain('the kernel logged a `martian source … from 198.18.0.100` line');
  });

  it('counts a martian line from the LB address the step after the ring first held something', () => {
    const found = run([node({ kmsg: '' }), node({ kmsg: ring() }), node({ kmsg: ring(FROM_LB) })]).of('lb-healthcheck-dropped');
    expect(found.filter((f) => f.severity === 'error').map((f) => f.evidence.find((e) => e.source === 'kmsg')?.time)).toEqual([new Date(at(2)).toISOString()]);
  });
});
