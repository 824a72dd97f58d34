// Seed 002 (kubernetes#81775) over hand-built samples: a client reuses its
// source port while the old connection to the Service sits in TIME_WAIT, and
// the new SYN goes on to the endpoint that connection had. The rows are the
// seed's own (`ipvsadm -Lnc` and /proc/net/nf_conntrack, 17:58:22–17:58:27);
// the rollout around them is made up, as in test/fixtures/timelines/seed-002-*.
// Beside the failures: reuse towards a pod that still serves, a SYN on a
// fresh tuple, a reused tuple nothing NATs, iptables mode re-balancing the
// reused tuple, and conn_reuse_mode=1 on a fixed kernel rescheduling it.
import { describe, expect, it } from 'vitest';
import type { FindingLine } from '../../../../collector/detection/aggregate.ts';
import { NodeSteps, type Outputs } from '../../../helpers/node-steps.ts';

const T0 = Date.parse('2020-06-08T09:58:22Z');
const at = (s: number) => T0 + s * 1000;
const iso = (s: number) => new Date(at(s)).toISOString();

const NODE = 'cn-beijing.10.20.79.226';
const CLIENT = '10.23.31.87';
const VIP = '10.20.79.226';
const OLD = '10.27.1.249';
const KEPT = '10.27.1.248';
const NEW = '10.27.1.250';

/** `ipvsadm -Ln` with the seed's real-server line format; weight 0 is draining. */
const ipvs = (servers: readonly [address: string, weight: number][]) =>
  `IP Virtual Server version 1.2.1 (size=4096)
Prot LocalAddress:Port Scheduler Flags
  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn
TCP  ${VIP}:31199 rr
${servers.map(([a, w]) => `  -> ${`${a}:80`.padEnd(28)} Masq    ${w}      0          ${a === OLD ? 1 : 0}         `).join('\n')}
`;
const BEFORE: [string, number][] = [[KEPT, 1], [OLD, 1]];
const DRAINING: [string, number][] = [[KEPT, 1], [OLD, 0], [NEW, 1]];
const AFTER: [string, number][] = [[KEPT, 1], [NEW, 1]];

/** `ipvsadm -Lnc`: one entry of the seed's client tuple. */
const conn = (expire: string, state: string, destination = OLD, sport = 58578) =>
  `IPVS connection entries
pro expire state       source             virtual            destination
TCP ${expire}  ${state.padEnd(11)} ${`${CLIENT}:${sport}`.padEnd(18)} ${VIP}:31199 ${destination}:80
`;
/** The same tuple in /proc/net/nf_conntrack: TIME_WAIT after the first connection, SYN_SENT for the reusing one. */
const timeWait = (timer: number, pod = OLD, sport = 58578) =>
  `ipv4     2 tcp      6 ${timer} TIME_WAIT src=${CLIENT} dst=${VIP} sport=${sport} dport=31199 src=${pod} dst=${CLIENT} sport=80 dport=${sport} [ASSURED] mark=0 zone=0 use=2\n`;
const synSent = (timer: number, pod = OLD, sport = 58578) =>
  `ipv4     2 tcp      6 ${timer} SYN_SENT src=${CLIENT} dst=${VIP} sport=${sport} dport=31199 [UNREPLIED] src=${pod} dst=${CLIENT} sport=80 dport=${sport} mark=0 zone=0 use=2\n`;
const sysctl = (kernel: string, reuseMode: 0 | 1) =>
  `kernel.osrelease = ${kernel}\nnet.ipv4.vs.conn_reuse_mode = ${reuseMode}\nnet.ipv4.vs.expire_nodest_conn = 0\nnet.ipv4.ip_local_port_range = 32768\t60999\n`;
const OLD_KERNEL = '4.19.91-19.1.al7.x86_64';

/** The same Service in iptables mode: ClusterIP and NodePort 31199, a KUBE-SEP chain per pod. */
const SEP: Record<string, string> = { [KEPT]: 'KUBE-SEP-4S7NMWHTQECMLTDA', [OLD]: 'KUBE-SEP-I2YR57KE2BLSY73L', [NEW]: 'KUBE-SEP-RRH7WDK5LM6YECXZ' };
const rules = (pods: readonly string[]) => `*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WGW5ZPXP7HZEBG5V - [0:0]
${pods.map((p) => `:${SEP[p]} - [0:0]`).join('\n')}
-A KUBE-NODEPORTS -p tcp -m comment --comment "ratel/vs-test-service:main" -m tcp --dport 31199 -j KUBE-SVC-WGW5ZPXP7HZEBG5V
-A KUBE-SERVICES -d 10.27.255.42/32 -p tcp -m comment --comment "ratel/vs-test-service:main cluster IP" -m tcp --dport 80 -j KUBE-SVC-WGW5ZPXP7HZEBG5V
${pods.map((p) => `-A KUBE-SVC-WGW5ZPXP7HZEBG5V -m comment --comment "ratel/vs-test-service:main" -j ${SEP[p]}`).join('\n')}
${pods.map((p) => `-A ${SEP[p]} -p tcp -m comment --comment "ratel/vs-test-service:main" -m tcp -j DNAT --to-destination ${p}:80`).join('\n')}
COMMIT
`;

type Sample = [seconds: number, outputs: Outputs];

function run(samples: readonly Sample[]): FindingLine[] {
  const n = new NodeSteps(NODE);
  for (const [s, o] of samples) n.step(at(s), o);
  n.detection.flush(at(3600));
  return n.of('port-reuse-to-removed-endpoint');
}

/** The seed's rollout in IPVS mode: OLD drains at 2, leaves at 3, the client reuses its port at 4. */
const ipvsRollout = (o: { conns: boolean; conntrack: boolean; kernel?: string; reuseMode?: 0 | 1; last?: [string, number][] }): Sample[] => {
  const both = (c: string, ct: string): Outputs => ({ ...(o.conns ? { 'ipvs-conn': c } : {}), ...(o.conntrack ? { conntrack: ct } : {}) });
  return [
    [0, { ipvs: ipvs(BEFORE), sysctl: sysctl(o.kernel ?? OLD_KERNEL, o.reuseMode ?? 0), ...both(conn('01:00', 'TIME_WAIT'), timeWait(60)) }],
    [2, { ipvs: ipvs(DRAINING), ...both(conn('00:58', 'TIME_WAIT'), timeWait(58)) }],
    [3, { ipvs: ipvs(o.last ?? AFTER) }],
    [4, both(conn('00:59', 'SYN_RECV'), synSent(119))],
    [5, both(conn('00:58', 'SYN_RECV'), synSent(117))],
  ];
};

interface Expected {
  readonly severity: 'error' | 'warning';
  readonly service: string;
  /** Evidence as [source, sample second]. */
  readonly evidence: readonly [string, number][];
  readonly seenIn: string;
  readonly left: RegExp;
  readonly advice: RegExp;
  readonly notInAdvice?: RegExp;
}

const IPVS_SERVICE = `TCP ${VIP}:31199`;

describe('port-reuse-to-removed-endpoint', () => {
  it.each<[string, Sample[], Expected]>([
    [
      'the IPVS connection table (ipvsadm -Lnc) shows TIME_WAIT -> SYN_RECV towards a real server the rollout removed',
      ipvsRollout({ conns: true, conntrack: false }),
      {
        severity: 'error',
        service: IPVS_SERVICE,
        evidence: [['ipvs-conn', 0], ['ipvs-conn', 4], ['ipvs', 2], ['sysctl', 4]],
        seenIn: 'ipvs-conn',
        left: new RegExp(`which left the Service at ${iso(3)}`),
        advice: /conn_reuse_mode=0 IPVS reuses a TIME_WAIT entry.*older than 5\.9/,
      },
    ],
    [
      'conntrack alone (IPVS mode, no -Lnc listing) shows TIME_WAIT -> SYN_SENT still NATed to the removed real server',
      ipvsRollout({ conns: false, conntrack: true }),
      {
        severity: 'error',
        service: IPVS_SERVICE,
        evidence: [['conntrack', 0], ['conntrack', 4], ['ipvs', 2], ['sysctl', 4]],
        seenIn: 'conntrack',
        left: new RegExp(`which left the Service at ${iso(3)}`),
        advice: /conn_reuse_mode=0 IPVS reuses/,
      },
    ],
    [
      'both tables showing the same reuse in one sample',
      ipvsRollout({ conns: true, conntrack: true }),
      {
        severity: 'error',
        service: IPVS_SERVICE,
        evidence: [['ipvs-conn', 0], ['ipvs-conn', 4], ['conntrack', 0], ['conntrack', 4], ['ipvs', 2], ['sysctl', 4]],
        seenIn: 'ipvs-conn,conntrack',
        left: new RegExp(`which left the Service at ${iso(3)}`),
        advice: /older than 5\.9/,
      },
    ],
    [
      'the reused tuple going to a real server that is draining (weight 0) but not yet removed',
      ipvsRollout({ conns: true, conntrack: true, last: DRAINING }),
      {
        // The pod still answers while it drains; the failure comes when it is deleted.
        severity: 'warning',
        service: IPVS_SERVICE,
        evidence: [['ipvs-conn', 0], ['ipvs-conn', 4], ['conntrack', 0], ['conntrack', 4], ['ipvs', 2], ['sysctl', 4]],
        seenIn: 'ipvs-conn,conntrack',
        left: new RegExp(`which is draining \\(weight 0\\) since ${iso(2)}`),
        advice: /conn_reuse_mode=0/,
      },
    ],
    [
      'a kernel >= 5.9 where something other than kube-proxy left conn_reuse_mode=0',
      ipvsRollout({ conns: true, conntrack: false, kernel: '5.10.134-15.al8.x86_64' }),
      {
        severity: 'error',
        service: IPVS_SERVICE,
        evidence: [['ipvs-conn', 0], ['ipvs-conn', 4], ['ipvs', 2], ['sysctl', 4]],
        seenIn: 'ipvs-conn',
        left: /left the Service/,
        advice: /On kernels >= 5\.9 \(this one is 5\.10\.134-15\.al8\.x86_64\) set net\.ipv4\.vs\.conn_reuse_mode=1.*something else set 0/,
        notInAdvice: /older than 5\.9/,
      },
    ],
    [
      'the listing showing the old destination kept although conn_reuse_mode reads 1',
      ipvsRollout({ conns: true, conntrack: false, kernel: '5.10.134-15.al8.x86_64', reuseMode: 1 }),
      {
        // Where the SYN went is what the listing shows; the sysctl cannot be blamed for it.
        severity: 'error',
        service: IPVS_SERVICE,
        evidence: [['ipvs-conn', 0], ['ipvs-conn', 4], ['ipvs', 2], ['sysctl', 4]],
        seenIn: 'ipvs-conn',
        left: /left the Service/,
        advice: /conn_reuse_mode reads 1 here/,
        notInAdvice: /with net\.ipv4\.vs\.conn_reuse_mode=1 IPVS reuses|set net\.ipv4\.vs\.conn_reuse_mode=1|something else set 0/,
      },
    ],
    [
      'iptables mode: conntrack keeps the TIME_WAIT entry NAT for the new SYN, towards a KUBE-SEP the rules no longer have',
      [
        // ip_vs loaded on an iptables node: its sysctl is there, and beside the point.
        [0, { iptables: rules([KEPT, OLD]), sysctl: sysctl(OLD_KERNEL, 0), conntrack: timeWait(60) }],
        [2, { iptables: rules([KEPT, NEW]), conntrack: timeWait(58) }],
        [4, { conntrack: synSent(119) }],
      ],
      {
        severity: 'error',
        service: 'ratel/vs-test-service:main',
        evidence: [['conntrack', 0], ['conntrack', 4], ['iptables', 0]],
        seenIn: 'conntrack',
        left: new RegExp(`which left the Service at ${iso(2)}`),
        // No IPVS here: the advice must not put it on conn_reuse_mode.
        advice: /conntrack -D -p tcp --orig-dst 10\.20\.79\.226 --dst-nat 10\.27\.1\.249/,
        notInAdvice: /IPVS reuses|conn_reuse_mode=/,
      },
    ],
  ])('reports %s', (_name, samples, x) => {
    const found = run(samples);
    expect(found).toHaveLength(1);
    const f = found[0];
    expect(f).toMatchObject({
      severity: x.severity,
      node: NODE,
      service: x.service,
      tuple: { proto: 'tcp', src: CLIENT, sport: 58578, dst: VIP, dport: 31199 },
      endpoint: `${OLD}:80`,
      time: at(4),
      details: expect.objectContaining({ seenIn: x.seenIn }),
    });
    expect(f?.evidence.map((e) => [e.source, e.time])).toEqual(x.evidence.map(([source, s]) => [source, iso(s)]));
    // The lines quoted are the ones the tools printed at those times: the TIME_WAIT row before the SYN_RECV/SYN_SENT one.
    const raws = f?.evidence.map((e) => e.raw) ?? [];
    if (x.seenIn.includes('ipvs-conn')) expect(raws).toEqual(expect.arrayContaining([conn('01:00', 'TIME_WAIT').split('\n')[2], conn('00:59', 'SYN_RECV').split('\n')[2]]));
    if (x.seenIn.includes('conntrack')) expect(raws).toEqual(expect.arrayContaining([timeWait(60).trimEnd(), synSent(119).trimEnd()]));
    const program = f?.evidence.find((e) => e.source === 'ipvs' || e.source === 'iptables')?.raw;
    expect(program).toMatch(x.service === IPVS_SERVICE ? new RegExp(`-> ${OLD}:80 +Masq +[01] `) : new RegExp(`--to-destination ${OLD}:80`));
    // The summary says only what the rows show: the tuple, TIME_WAIT before, where the new SYN went, and the endpoint's state.
    expect(f?.summary).toContain(`${CLIENT}:58578 reused its source port towards ${VIP}:31199 while the old connection was in TIME_WAIT; the new SYN went to ${OLD}:80`);
    expect(f?.summary).toMatch(x.left);
    expect(f?.advice).toMatch(x.advice);
    if (x.notInAdvice) expect(f?.advice).not.toMatch(x.notInAdvice);
  });

  it.each<[string, Sample[]]>([
    [
      'a reused tuple going to a real server that stays in the Service (no rollout)',
      [
        [0, { ipvs: ipvs(BEFORE), sysctl: sysctl(OLD_KERNEL, 0), 'ipvs-conn': conn('01:00', 'TIME_WAIT'), conntrack: timeWait(60) }],
        [2, { 'ipvs-conn': conn('00:58', 'TIME_WAIT'), conntrack: timeWait(58) }],
        [4, { 'ipvs-conn': conn('00:59', 'SYN_RECV'), conntrack: synSent(119) }],
      ],
    ],
    [
      'a SYN on a fresh tuple (no TIME_WAIT entry before it), even to the departed real server',
      [
        [0, { ipvs: ipvs(BEFORE), sysctl: sysctl(OLD_KERNEL, 0), 'ipvs-conn': conn('01:00', 'TIME_WAIT', OLD, 40000), conntrack: timeWait(60, OLD, 40000) }],
        [2, { ipvs: ipvs(DRAINING) }],
        [3, { ipvs: ipvs(AFTER) }],
        [4, { 'ipvs-conn': conn('00:59', 'SYN_RECV'), conntrack: synSent(119) }],
      ],
    ],
    [
      'a TIME_WAIT -> SYN_SENT on a tuple nothing NATs (the client dialling the pod address itself)',
      [
        [0, { ipvs: ipvs(BEFORE), sysctl: sysctl(OLD_KERNEL, 0), conntrack: `ipv4     2 tcp      6 60 TIME_WAIT src=${CLIENT} dst=${OLD} sport=58578 dport=80 src=${OLD} dst=${CLIENT} sport=80 dport=58578 [ASSURED] mark=0 zone=0 use=2\n` }],
        [2, { ipvs: ipvs(DRAINING) }],
        [3, { ipvs: ipvs(AFTER) }],
        [4, { conntrack: `ipv4     2 tcp      6 119 SYN_SENT src=${CLIENT} dst=${OLD} sport=58578 dport=80 [UNREPLIED] src=${OLD} dst=${CLIENT} sport=80 dport=58578 mark=0 zone=0 use=2\n` }],
      ],
    ],
    [
      'iptables mode: conntrack re-creates the reused tuple and the rules send the new SYN to a pod still serving',
      [
        [0, { iptables: rules([KEPT, OLD]), sysctl: `kernel.osrelease = ${OLD_KERNEL}\n`, conntrack: timeWait(60) }],
        [2, { iptables: rules([KEPT, NEW]), conntrack: timeWait(58) }],
        [4, { conntrack: synSent(119, NEW) }],
      ],
    ],
    [
      'conn_reuse_mode=1 on a 5.10 kernel: IPVS reschedules the reused tuple to a live real server',
      [
        [0, { ipvs: ipvs(BEFORE), sysctl: sysctl('5.10.134-15.al8.x86_64', 1), 'ipvs-conn': conn('01:00', 'TIME_WAIT'), conntrack: timeWait(60) }],
        [2, { ipvs: ipvs(DRAINING), 'ipvs-conn': conn('00:58', 'TIME_WAIT'), conntrack: timeWait(58) }],
        [3, { ipvs: ipvs(AFTER) }],
        [4, { 'ipvs-conn': conn('00:59', 'SYN_RECV', NEW), conntrack: synSent(119, NEW) }],
      ],
    ],
    [
      'a TIME_WAIT entry of the departed real server left to expire, no new SYN on its tuple',
      [
        [0, { ipvs: ipvs(BEFORE), sysctl: sysctl(OLD_KERNEL, 0), 'ipvs-conn': conn('01:00', 'TIME_WAIT'), conntrack: timeWait(60) }],
        [2, { ipvs: ipvs(DRAINING), 'ipvs-conn': conn('00:58', 'TIME_WAIT'), conntrack: timeWait(58) }],
        [3, { ipvs: ipvs(AFTER) }],
        [4, { 'ipvs-conn': conn('00:56', 'TIME_WAIT'), conntrack: timeWait(56) }],
        [60, { 'ipvs-conn': 'IPVS connection entries\npro expire state       source             virtual            destination\n', conntrack: '' }],
      ],
    ],
  ])('stays silent on %s', (_name, samples) => {
    expect(run(samples)).toEqual([]);
  });
});
