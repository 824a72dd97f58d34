// Stale NAT after a rollout, over hand-built samples (the outputs a node would
// print, second by second), beside the rollouts that must stay silent:
// kube-proxy's own cleanup one sample after the rules change, a one-shot
// query, a live endpoint, a draining TCP connection, and nftables' flushed
// endpoint chains.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { NodeSteps, type Outputs } from '../../../helpers/node-steps.ts';

const T0 = Date.parse('2026-11-30T10:00:00Z');
const at = (s: number) => T0 + s * 1000;

const rules = (endpoints: readonly string[]) => `*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-TCOU7JCQXEZGVUNU - [0:0]
${endpoints.map((_, i) => `:KUBE-SEP-${'ABCDEFGH'[i]?.repeat(16)} - [0:0]`).join('\n')}
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU
${endpoints.map((ep, i) => `-A KUBE-SVC-TCOU7JCQXEZGVUNU -m comment --comment "kube-system/kube-dns:dns -> ${ep}" -j KUBE-SEP-${'ABCDEFGH'[i]?.repeat(16)}`).join('\n')}
${endpoints.map((ep, i) => `-A KUBE-SEP-${'ABCDEFGH'[i]?.repeat(16)} -p udp -m comment --comment "kube-system/kube-dns:dns" -m udp -j DNAT --to-destination ${ep}`).join('\n')}
COMMIT
`;
const BEFORE = rules(['10.244.1.3:53', '10.244.2.3:53']);
const AFTER = rules(['10.244.2.3:53', '10.244.3.3:53']);

/** A UDP entry from the client's fixed port 5000 to the DNS ClusterIP, NATed to `pod`, with `timer` seconds left. */
const udp = (pod: string, timer: number, sport = 5000) =>
  `ipv4     2 udp      17 ${timer} src=10.244.0.5 dst=10.96.0.10 sport=${sport} dport=53 packets=4 bytes=240 src=${pod} dst=10.244.0.5 sport=53 dport=${sport} packets=4 bytes=400 [ASSURED] mark=0 zone=0 use=2\n`;
const tcp = (pod: string, timer: number) =>
  `ipv4     2 tcp      6 ${timer} ESTABLISHED src=10.244.0.5 dst=10.96.0.10 sport=41000 dport=53 packets=9 bytes=900 src=${pod} dst=10.244.0.5 sport=53 dport=41000 packets=9 bytes=900 [ASSURED] mark=0 zone=0 use=2\n`;

type Sample = [seconds: number, outputs: Outputs];

function run(samples: readonly Sample[]): NodeSteps {
  const n = new NodeSteps();
  for (const [s, o] of samples) n.step(at(s), o);
  n.detection.flush(at(3600));
  return n;
}

describe('stale-nat-to-removed-endpoint', () => {
  it('reports a client still pinned to the removed pod once kube-proxy had two samples and 2 s to clean up', () => {
    // Rollout at t=2; cleanup skipped; the client keeps sending: its UDP timer is held at the top (30, 29, 30 …).
    const n = run([
      [0, { iptables: BEFORE, conntrack: udp('10.244.1.3', 30) }],
      [1, { conntrack: udp('10.244.1.3', 29) }],
      [2, { iptables: AFTER, conntrack: udp('10.244.1.3', 30) }],
      [3, { conntrack: udp('10.244.1.3', 29) }],
      [4, { conntrack: udp('10.244.1.3', 30) }],
    ]);
    const found = n.of('stale-nat-to-removed-endpoint');
    expect(found[0]).toMatchObject({
      severity: 'error',
      node: 'node-1',
      service: 'kube-system/kube-dns:dns',
      endpoint: '10.244.1.3:53',
      tuple: { proto: 'udp', src: '10.244.0.5', sport: 5000, dst: '10.96.0.10', dport: 53 },
      time: at(4),
    });
    // The evidence quotes the entry at two samples, each with the time it read that way, and the rule that programmed the pod.
    expect(found[0]?.evidence.map((e) => [e.source, e.time])).toEqual([
      ['conntrack', new Date(at(2)).toISOString()],
      ['conntrack', new Date(at(4)).toISOString()],
      ['iptables', new Date(at(0)).toISOString()],
    ]);
    expect(found[0]?.evidence[2]?.raw).toContain('--to-destination 10.244.1.3:53');
    expect(found[0]?.summary).toContain('re-armed');
  });

  it.each<[string, Sample[]]>([
    [
      "a clean rollout: kube-proxy deletes the entry one sample after the rules change, the client's next query goes to a new pod",
      [
        [0, { iptables: BEFORE, conntrack: udp('10.244.1.3', 30) }],
        [1, { iptables: AFTER, conntrack: udp('10.244.1.3', 30) }],
        [2, { conntrack: '' }],
        [3, { conntrack: udp('10.244.3.3', 30) }],
        [4, { conntrack: udp('10.244.3.3', 30) }],
        [5, { conntrack: udp('10.244.3.3', 30) }],
      ],
    ],
    [
      'a one-shot query sent just before the rollout, left to expire',
      [
        [0, { iptables: BEFORE, conntrack: udp('10.244.1.3', 30) }],
        [1, { iptables: AFTER, conntrack: udp('10.244.1.3', 29) }],
        [2, { conntrack: udp('10.244.1.3', 28) }],
        [3, { conntrack: udp('10.244.1.3', 27) }],
        [4, { conntrack: udp('10.244.1.3', 26) }],
      ],
    ],
    [
      'a client whose entry points at a pod that stays in the Service',
      [
        [0, { iptables: BEFORE, conntrack: udp('10.244.2.3', 30) }],
        [1, { iptables: AFTER, conntrack: udp('10.244.2.3', 30) }],
        [2, { conntrack: udp('10.244.2.3', 30) }],
        [3, { conntrack: udp('10.244.2.3', 30) }],
        [4, { conntrack: udp('10.244.2.3', 30) }],
      ],
    ],
    [
      'an established TCP connection draining from a pod that left the Service (graceful termination)',
      [
        [0, { iptables: BEFORE, conntrack: tcp('10.244.1.3', 86400) }],
        [1, { iptables: AFTER, conntrack: tcp('10.244.1.3', 86399) }],
        [2, { conntrack: tcp('10.244.1.3', 86400) }],
        [3, { conntrack: tcp('10.244.1.3', 86400) }],
        [4, { conntrack: tcp('10.244.1.3', 86400) }],
      ],
    ],
    [
      'traffic re-arming the entry only inside the grace period, then stopping',
      [
        [0, { iptables: BEFORE, conntrack: udp('10.244.1.3', 30) }],
        [1, { iptables: AFTER, conntrack: udp('10.244.1.3', 30) }],
        [2, { conntrack: udp('10.244.1.3', 30) }],
        [3, { conntrack: udp('10.244.1.3', 29) }],
        [4, { conntrack: udp('10.244.1.3', 28) }],
      ],
    ],
  ])('stays silent on %s', (_name, samples) => {
    expect(run(samples).of('stale-nat-to-removed-endpoint')).toEqual([]);
  });

  it('in nftables mode, a flushed endpoint chain left behind is not an endpoint: the pinned client is reported', () => {
    const nft = (f: string) => readFileSync(new URL(`../../../fixtures/nft/${f}`, import.meta.url), 'utf8');
    const n = run([
      [0, { nft: nft('rollout-before.json'), conntrack: udp('10.244.1.3', 30) }],
      [1, { nft: nft('rollout-flushed-endpoint-chain.json'), conntrack: udp('10.244.1.3', 29) }],
      [2, { conntrack: udp('10.244.1.3', 30) }],
      [3, { conntrack: udp('10.244.1.3', 29) }],
      [4, { conntrack: udp('10.244.1.3', 30) }],
    ]);
    expect(n.detection.services('node-1').find((s) => s.id === 'kube-system/kube-dns:dns')?.endpoints.map((e) => `${e.address}:${e.port}`)).toEqual(['10.244.2.3:53', '10.244.3.3:53']);
    expect(n.of('stale-nat-to-removed-endpoint')).toEqual([expect.objectContaining({ endpoint: '10.244.1.3:53', time: at(4), evidence: expect.arrayContaining([expect.objectContaining({ source: 'nft' })]) })]);
  });
});
