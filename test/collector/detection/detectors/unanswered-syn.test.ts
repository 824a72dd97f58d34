// The symptom itself over hand-built samples: a client's SYN to a Service,
// NATed to a pod that never answers, still SYN_SENT [UNREPLIED] two seconds
// on (the lab's case in test/integration/findings.test.ts: the pod is gone,
// kube-proxy has not caught up). Beside it: a SYN answered within the
// threshold, an entry deleted before it, a SYN to no Service, a UDP query
// without a reply, and a reused tuple port-reuse already explains.
import { describe, expect, it } from 'vitest';
import { UNANSWERED_AFTER_MS } from '../../../../collector/detection/detectors/unanswered-syn.ts';
import { MAX_PENDING_SYNS } from '../../../../collector/detection/pending-syns.ts';
import { NodeSteps, type Outputs } from '../../../helpers/node-steps.ts';

const T0 = Date.parse('2026-11-30T10:00:00Z');
const at = (s: number) => T0 + s * 1000;
const iso = (s: number) => new Date(at(s)).toISOString();

const CLIENT = '198.19.1.10';
const CLUSTER_IP = '198.18.64.44';
const NODE_IP = '198.18.0.11';

const SEP: Record<string, string> = { '198.19.2.10': 'KUBE-SEP-AAAAAAAAAAAAAAAA', '198.19.3.10': 'KUBE-SEP-BBBBBBBBBBBBBBBB' };
/** team/api:https: ClusterIP 198.18.64.44:443 and NodePort 30443 to the pods' port 8443. */
const rules = (pods: readonly string[]) => `*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-7EJNTS7AENER2WX5 - [0:0]
${pods.map((p) => `:${SEP[p]} - [0:0]`).join('\n')}
-A KUBE-SERVICES -d ${CLUSTER_IP}/32 -p tcp -m comment --comment "team/api:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-7EJNTS7AENER2WX5
-A KUBE-NODEPORTS -p tcp -m comment --comment "team/api:https" -m tcp --dport 30443 -j KUBE-SVC-7EJNTS7AENER2WX5
${pods.map((p) => `-A KUBE-SVC-7EJNTS7AENER2WX5 -m comment --comment "team/api:https -> ${p}:8443" -j ${SEP[p]}`).join('\n')}
${pods.map((p) => `-A ${SEP[p]} -p tcp -m comment --comment "team/api:https" -m tcp -j DNAT --to-destination ${p}:8443`).join('\n')}
COMMIT
`;
const RULES = rules(['198.19.2.10']);

/** A SYN from the client's port 45000 to `dst:dport`, NATed to `pod:port` (not NATed when `pod` is null). */
const syn = (timer: number, o: { dst?: string; dport?: number; pod?: string | null; port?: number; src?: string } = {}) => {
  const [src, dst, dport] = [o.src ?? CLIENT, o.dst ?? CLUSTER_IP, o.dport ?? 443];
  const [rsrc, rport] = o.pod === null ? [dst, dport] : [o.pod ?? '198.19.2.10', o.port ?? 8443];
  return `ipv4     2 tcp      6 ${timer} SYN_SENT src=${src} dst=${dst} sport=45000 dport=${dport} [UNREPLIED] src=${rsrc} dst=${src} sport=${rport} dport=45000 mark=0 zone=0 use=2\n`;
};
const established = `ipv4     2 tcp      6 431999 ESTABLISHED src=${CLIENT} dst=${CLUSTER_IP} sport=45000 dport=443 src=198.19.2.10 dst=${CLIENT} sport=8443 dport=45000 [ASSURED] mark=0 zone=0 use=2\n`;
const synRecv = `ipv4     2 tcp      6 59 SYN_RECV src=${CLIENT} dst=${CLUSTER_IP} sport=45000 dport=443 src=198.19.2.10 dst=${CLIENT} sport=8443 dport=45000 mark=0 zone=0 use=2\n`;

type Sample = [seconds: number, outputs: Outputs];
const start: Sample = [0, { iptables: RULES, conntrack: '' }];

function run(samples: readonly Sample[]): NodeSteps {
  const n = new NodeSteps('node-1');
  for (const [s, o] of samples) n.step(at(s), o);
  n.detection.flush(at(3600));
  return n;
}

interface Expected {
  readonly time: number;
  readonly service: string;
  readonly tuple: { dst: string; dport: number };
  readonly endpoint: string | null;
  /** Evidence lines with the second each was read at. */
  readonly evidence: readonly [raw: string, second: number][];
  readonly summary: string;
  readonly advice: RegExp;
}

describe('unanswered-syn', () => {
  it('waits two seconds: the rule the cases below count against', () => {
    expect(UNANSWERED_AFTER_MS).toBe(2_000);
  });

  it.each<[string, Sample[], Expected]>([
    [
      'a SYN to the ClusterIP NATed to a pod that never answers, retransmitted at 1 s and 3 s (each re-arming the timer)',
      [start, [1, { conntrack: syn(119) }], [2, { conntrack: syn(120) }], [3, { conntrack: syn(119) }], [4, { conntrack: syn(120) }], [8, { conntrack: syn(120) }]],
      {
        // First read at 1 s; 2 s later, at 3 s, it is still unanswered. Reported there, once.
        time: at(3),
        service: 'team/api:https',
        tuple: { dst: CLUSTER_IP, dport: 443 },
        endpoint: '198.19.2.10:8443',
        // The line at 3 s is the one re-read at 2 s (a timer counting down is not sent): each is quoted with the time it read so.
        evidence: [[syn(119), 1], [syn(120), 2]],
        summary: `${CLIENT}:45000 has had no answer to its SYN to ${CLUSTER_IP}:443 (sent on to 198.19.2.10:8443) for 2 s`,
        advice: /Check that 198\.19\.2\.10:8443 is alive and reachable from node-1.*tcpdump -nn host 198\.19\.2\.10 and port 8443/,
      },
    ],
    [
      "a SYN from outside to this node's NodePort, NATed to the pod, never answered",
      [start, [1, { conntrack: syn(119, { src: '203.0.113.7', dst: NODE_IP, dport: 30443 }) }], [2, {}], [3, {}]],
      {
        time: at(3),
        service: 'team/api:https',
        tuple: { dst: NODE_IP, dport: 30443 },
        endpoint: '198.19.2.10:8443',
        evidence: [[syn(119, { src: '203.0.113.7', dst: NODE_IP, dport: 30443 }), 1]],
        summary: `203.0.113.7:45000 has had no answer to its SYN to ${NODE_IP}:30443 (sent on to 198.19.2.10:8443) for 2 s`,
        advice: /Check that 198\.19\.2\.10:8443 is alive/,
      },
    ],
    [
      'a SYN to the ClusterIP that nothing on the node NATed',
      [start, [1, { conntrack: syn(119, { pod: null }) }], [2, {}], [3, {}]],
      {
        time: at(3),
        service: 'team/api:https',
        tuple: { dst: CLUSTER_IP, dport: 443 },
        endpoint: null,
        evidence: [[syn(119, { pod: null }), 1]],
        summary: `${CLIENT}:45000 has had no answer to its SYN to ${CLUSTER_IP}:443 for 2 s`,
        advice: /Nothing on node-1 NATed this SYN/,
      },
    ],
    [
      'a SYN first read just before the agent missed samples: reported at the next sample, with the time it has waited',
      [start, [1, { conntrack: syn(119) }], [9, { conntrack: syn(120) }]],
      {
        time: at(9),
        service: 'team/api:https',
        tuple: { dst: CLUSTER_IP, dport: 443 },
        endpoint: '198.19.2.10:8443',
        evidence: [[syn(119), 1], [syn(120), 9]],
        summary: `${CLIENT}:45000 has had no answer to its SYN to ${CLUSTER_IP}:443 (sent on to 198.19.2.10:8443) for 8 s`,
        advice: /198\.19\.2\.10:8443/,
      },
    ],
  ])('reports %s', (_name, samples, x) => {
    const found = run(samples).of('unanswered-syn');
    expect(found).toHaveLength(1);
    const f = found[0];
    expect(f).toMatchObject({
      severity: 'warning',
      node: 'node-1',
      service: x.service,
      tuple: { proto: 'tcp', sport: 45000, ...x.tuple },
      endpoint: x.endpoint,
      time: x.time,
      count: 1,
      details: { unansweredForMs: x.time - at(1) },
    });
    expect(f?.evidence.map((e) => [e.source, e.raw, e.time])).toEqual(x.evidence.map(([raw, s]) => ['conntrack', raw.trimEnd(), iso(s)]));
    expect(f?.summary).toBe(x.summary);
    expect(f?.advice).toMatch(x.advice);
  });

  it.each<[string, Sample[]]>([
    ['a SYN answered a sample later (SYN_RECV, then ESTABLISHED)', [start, [1, { conntrack: syn(119) }], [2, { conntrack: synRecv }], [3, { conntrack: established }], [4, {}]]],
    ['a SYN answered just inside the threshold, after one retransmission', [start, [1, { conntrack: syn(119) }], [2, { conntrack: syn(120) }], [3, { conntrack: established }], [5, {}]]],
    ['an entry deleted before the threshold (the client gave up, or kube-proxy flushed it)', [start, [1, { conntrack: syn(119) }], [2, { conntrack: '' }], [3, {}], [4, {}]]],
    ['a SYN seen in one sample only', [start, [1, { conntrack: syn(119) }], [2, { conntrack: '' }], [5, {}]]],
    ['an unanswered SYN to an address that is no Service (a pod dialled directly)', [start, [1, { conntrack: syn(119, { dst: '198.19.3.10', dport: 8443, pod: null }) }], [2, {}], [3, {}], [4, {}]]],
    [
      'a UDP query to the ClusterIP without a reply: no SYN to wait for',
      [start, [1, { conntrack: `ipv4     2 udp      17 29 src=${CLIENT} dst=${CLUSTER_IP} sport=45000 dport=443 [UNREPLIED] src=198.19.2.10 dst=${CLIENT} sport=8443 dport=45000 mark=0 zone=0 use=2\n` }], [2, {}], [3, {}], [4, {}]],
    ],
  ])('stays silent on %s', (_name, samples) => {
    expect(run(samples).of('unanswered-syn')).toEqual([]);
  });

  it('under a SYN flood tracks the first MAX_PENDING_SYNS, reports each once, and says in the bounds that the rest were not tracked', () => {
    const flood = (timer: number, n: number) =>
      Array.from({ length: n }, (_, i) => syn(timer, { src: `198.19.${100 + Math.floor(i / 250)}.${1 + (i % 250)}` })).join('');
    const n = run([start, [1, { conntrack: flood(119, MAX_PENDING_SYNS + 5) }], [2, {}], [3, {}], [4, {}]]);
    const found = n.of('unanswered-syn');
    expect(found.reduce((sum, f) => sum + f.count, 0)).toBe(MAX_PENDING_SYNS);
    expect(found.every((f) => f.time >= at(3))).toBe(true);
    expect(n.collector.bounds.list('node-1')).toEqual([expect.objectContaining({ bound: 'pending-syns', subject: 'node-1', limit: MAX_PENDING_SYNS, hits: 1, action: expect.stringMatching(/^5 more unanswered SYNs were not tracked/) })]);
  });

  it('leaves to port-reuse a reused tuple stuck on a removed pod: one explanation, not two', () => {
    const timeWait = `ipv4     2 tcp      6 60 TIME_WAIT src=${CLIENT} dst=${CLUSTER_IP} sport=45000 dport=443 src=198.19.3.10 dst=${CLIENT} sport=8443 dport=45000 [ASSURED] mark=0 zone=0 use=2\n`;
    const stuck = (timer: number) => syn(timer, { pod: '198.19.3.10' });
    const n = run([
      [0, { iptables: rules(['198.19.2.10', '198.19.3.10']), conntrack: timeWait }],
      [1, { iptables: RULES }],
      [2, { conntrack: stuck(119) }],
      [3, { conntrack: stuck(120) }],
      [4, { conntrack: stuck(119) }],
      [6, { conntrack: stuck(120) }],
    ]);
    expect(n.of('port-reuse-to-removed-endpoint').map((f) => [f.severity, f.endpoint, f.time])).toEqual([['error', '198.19.3.10:8443', at(2)]]);
    expect(n.of('unanswered-syn')).toEqual([]);
  });
});
