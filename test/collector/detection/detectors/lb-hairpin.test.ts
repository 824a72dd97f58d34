// Seeds 000/001 over hand-built samples: the netshoot pod 192.168.41.36 on
// ip-192-168-55-245 connects to the NLB 192.168.155.87:80; the NLB keeps the
// client address and picks this very node, so the SYN comes back in on
// NodePort 30161, is NATed to 192.168.73.88:80, and the SYN-ACK goes to the
// pod from 192.168.55.245:30161, which it resets. The rules are the seed's
// own `iptables-save | grep` output; the conntrack lines follow the lab's
// (test/fixtures/logs/lab-collector.jsonl) with the seed's addresses and
// ports. Beside it: a client on another node, an answered connection, a
// direct NodePort connection, and a pod port that also has a real
// connection to the NodePort.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { FindingLine } from '../../../../collector/detection/aggregate.ts';
import { NodeSteps, type Outputs } from '../../../helpers/node-steps.ts';

const T0 = Date.parse('2022-10-07T08:00:00Z');
const at = (s: number) => T0 + s * 1000;
const iso = (s: number) => new Date(at(s)).toISOString();

// The first line is the shell prompt the seed pasted with it.
const RULES = readFileSync(new URL('../../../fixtures/iptables-save/seed-000-grep-service-nginx-demo.txt', import.meta.url), 'utf8').split('\n').slice(1).join('\n');
const NODE_IP = '192.168.55.245';
const POD = '192.168.41.36';
const NLB = '192.168.155.87';
const ENDPOINT = '192.168.73.88';
const addrs = `1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet ${NODE_IP}/19 brd 192.168.63.255 scope global dynamic eth0\\       valid_lft 3178sec preferred_lft 3178sec
`;

/** The pod's SYN to the load balancer: never answered while the LB hairpins it. */
const toLb = (timer: number, o: { answered?: boolean; sport?: number; dst?: string } = {}) => {
  const [sport, dst] = [o.sport ?? 52618, o.dst ?? NLB];
  return o.answered
    ? `ipv4     2 tcp      6 431999 ESTABLISHED src=${POD} dst=${dst} sport=${sport} dport=80 src=${dst} dst=${POD} sport=80 dport=${sport} [ASSURED] mark=0 zone=0 use=2\n`
    : `ipv4     2 tcp      6 ${timer} SYN_SENT src=${POD} dst=${dst} sport=${sport} dport=80 [UNREPLIED] src=${dst} dst=${POD} sport=80 dport=${sport} mark=0 zone=0 use=2\n`;
};
/** The same client tuple arriving on this node's NodePort, DNATed to the endpoint and masqueraded (port 30415). */
const atNodePort = (state: 'CLOSE' | 'SYN_RECV' | 'SYN_SENT' | 'ESTABLISHED', client = POD, sport = 52618) =>
  state === 'SYN_SENT'
    ? `ipv4     2 tcp      6 119 SYN_SENT src=${client} dst=${NODE_IP} sport=${sport} dport=30161 [UNREPLIED] src=${ENDPOINT} dst=${NODE_IP} sport=80 dport=30415 mark=0 zone=0 use=2\n`
    : state === 'ESTABLISHED'
      ? `ipv4     2 tcp      6 431999 ESTABLISHED src=${client} dst=${NODE_IP} sport=${sport} dport=30161 src=${ENDPOINT} dst=${NODE_IP} sport=80 dport=30415 [ASSURED] mark=0 zone=0 use=2\n`
      : `ipv4     2 tcp      6 ${state === 'CLOSE' ? 9 : 59} ${state} src=${client} dst=${NODE_IP} sport=${sport} dport=30161 src=${ENDPOINT} dst=${NODE_IP} sport=80 dport=30415 mark=0 zone=0 use=2\n`;

type Sample = [seconds: number, outputs: Outputs];
const quiet: Sample = [0, { iptables: RULES, addrs, conntrack: '' }];

function run(samples: readonly Sample[]): FindingLine[] {
  const n = new NodeSteps('ip-192-168-55-245.eu-west-1.compute.internal');
  for (const [s, o] of samples) n.step(at(s), o);
  n.detection.flush(at(3600));
  return n.of('lb-hairpin');
}

interface Expected {
  readonly time: number;
  /** The two conntrack lines quoted, each with the second it was read at. */
  readonly evidence: readonly [raw: string, second: number][];
  readonly says: readonly string[];
  readonly doesNotSay: readonly RegExp[];
}

describe('lb-hairpin', () => {
  it.each<[string, Sample[], Expected]>([
    [
      "the seed's hairpin: the SYN to the NLB unanswered, the same client port NATed on this node's NodePort, answered and reset (CLOSE)",
      [quiet, [1, { conntrack: toLb(119) + atNodePort('CLOSE') }]],
      {
        time: at(1),
        evidence: [[toLb(119), 1], [atNodePort('CLOSE'), 1]],
        says: [`${POD}:52618 connected to the load balancer ${NLB}:80`, `NodePort ${NODE_IP}:30161 with the client address kept`, `NATed to ${ENDPOINT}:80`, `the node answered from ${NODE_IP}:30161`, 'reset'],
        doesNotSay: [],
      },
    ],
    [
      "the NodePort entry read a sample after the pod's SYN: found when the retransmitted SYN re-arms the entry",
      [quiet, [1, { conntrack: toLb(119) }], [2, { conntrack: toLb(120) + atNodePort('SYN_RECV') }]],
      {
        time: at(2),
        evidence: [[toLb(120), 2], [atNodePort('SYN_RECV'), 2]],
        says: [`the node answered from ${NODE_IP}:30161`],
        doesNotSay: [/reset/],
      },
    ],
    [
      'the NodePort entry not answered by the endpoint yet: the hairpin shows, an answer from the node does not',
      [quiet, [1, { conntrack: toLb(119) + atNodePort('SYN_SENT') }]],
      {
        time: at(1),
        evidence: [[toLb(119), 1], [atNodePort('SYN_SENT'), 1]],
        says: [`NodePort ${NODE_IP}:30161 with the client address kept`, 'has had no answer from the load balancer'],
        doesNotSay: [/answered from/, /reset/],
      },
    ],
  ])('reports %s', (_name, samples, x) => {
    const found = run(samples);
    expect(found).toHaveLength(1);
    const f = found[0];
    expect(f).toMatchObject({
      severity: 'error',
      node: 'ip-192-168-55-245.eu-west-1.compute.internal',
      service: 'nginx-demo/service-nginx-demo',
      tuple: { proto: 'tcp', src: POD, sport: 52618, dst: NLB, dport: 80 },
      endpoint: `${ENDPOINT}:80`,
      time: x.time,
      details: { nodePort: 30161, nodeAddress: NODE_IP },
    });
    expect(f?.evidence.map((e) => [e.source, e.raw, e.time])).toEqual(x.evidence.map(([raw, s]) => ['conntrack', raw.trimEnd(), iso(s)]));
    for (const s of x.says) expect(f?.summary).toContain(s);
    for (const r of x.doesNotSay) expect(f?.summary).not.toMatch(r);
    // Without the Kubernetes API the advice cannot know the annotations: it names both ways out.
    expect(f?.advice).toMatch(/aws-load-balancer-nlb-target-type: ip.*preserve_client_ip\.enabled=false.*nginx-demo\/service-nginx-demo/);
  });

  it.each<[string, Sample[]]>([
    [
      'a client on another node reaching the NLB, which picks this node: only the NodePort entry is here, and it is answered',
      [quiet, [1, { conntrack: atNodePort('SYN_RECV', '192.168.90.17', 41000) }], [2, { conntrack: atNodePort('ESTABLISHED', '192.168.90.17', 41000) }]],
    ],
    [
      "that client's own node: its SYN to the NLB answered a sample later, nothing came back to a NodePort here",
      [quiet, [1, { conntrack: toLb(119) }], [2, { conntrack: toLb(0, { answered: true }) }]],
    ],
    [
      'the pod connecting to its own node on the NodePort directly, not through the load balancer',
      [quiet, [1, { conntrack: atNodePort('SYN_RECV') }], [2, { conntrack: atNodePort('ESTABLISHED') }]],
    ],
    [
      'an unanswered SYN to an outside address from a pod port that also has an established connection straight to the NodePort',
      [quiet, [1, { conntrack: atNodePort('ESTABLISHED') }], [2, { conntrack: atNodePort('ESTABLISHED') + toLb(119, { dst: '203.0.113.50' }) }], [3, { conntrack: atNodePort('ESTABLISHED') + toLb(120, { dst: '203.0.113.50' }) }]],
    ],
    [
      'a SYN to the NLB unanswered with nothing of that client port on a NodePort',
      [quiet, [1, { conntrack: toLb(119) + atNodePort('CLOSE', POD, 52700) }], [2, { conntrack: toLb(120) + atNodePort('CLOSE', POD, 52700) }]],
    ],
  ])('stays silent on %s', (_name, samples) => {
    expect(run(samples)).toEqual([]);
  });
});
