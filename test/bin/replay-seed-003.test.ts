// Seed 003 recorded from the lab's IPVS-mode node (test/lab/capture-seed-003.ts):
// ipvsadm text as kube-proxy programs it, real ipsets, addresses, routes,
// sysctls and rt_cache counters, replayed through the agent's samplers and
// the collector's pipeline; with and without ipset-save.txt, and with and
// without what the Kubernetes API said (`replay DIR --kube KUBE_DIR`).
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { replay } from '../../bin/replay.ts';
import type { FindingLine } from '../../collector/detection/aggregate.ts';
import type { Evidence } from '../../collector/detection/findings.ts';
import { captureLog } from '../helpers/capture-log.ts';

const timelines = join(new URL('../..', import.meta.url).pathname, 'test/fixtures/timelines');
const WITH_IPSETS = join(timelines, 'seed-003-ipvs-lb-healthcheck');
const NO_IPSETS = join(timelines, 'seed-003-ipvs-lb-healthcheck-no-ipset');
const API_LB_LOCAL = join(timelines, 'kube/seed-003-hc-web-lb-local');
const API_CLUSTER_IP = join(timelines, 'kube/seed-003-hc-web-clusterip');

// The recorded steps: before the probes, 1.3 s and 2.7 s into them, after the control.
const T1 = '2026-12-01T20:09:03.521Z';
const T2 = '2026-12-01T20:09:04.899Z';
const T3 = '2026-12-01T20:09:06.308Z';
/** When the recorded API list was taken. */
const LISTED = '2026-12-01T20:09:00.000Z';

/** The recorded output of one step, as lines (both node recordings share these files byte for byte). */
const recorded = (time: string, file: string): string[] => readFileSync(join(WITH_IPSETS, 'node-1', time, file), 'utf8').split('\n');
const lineWith = (time: string, file: string, text: string): string => {
  const found = recorded(time, file).filter((l) => l.includes(text));
  expect(found, `${file} at ${time}: one line with ${text}`).toHaveLength(1);
  return found[0] ?? '';
};
const ev = (source: Evidence['source'], time: string, raw: string): Evidence => ({ source, node: 'node-1', time, raw });

/** What the node showed at `time`, verbatim: the local route and address of the LB IP, every accept_local, and with `prev` the rule counter and rt_cache rows that rose since. */
function nodeEvidence(time: string, prev: string | null): Evidence[] {
  const out = [
    ev('routes', time, lineWith(time, 'ip-route.txt', 'local 198.18.100.20 ')),
    ev('addrs', time, lineWith(time, 'ip-addr.txt', 'inet 198.18.100.20/32')),
    // The sysctls were read once, at the first step, and never changed.
    ...recorded(T1, 'sysctl.txt')
      .filter((l) => l.includes('.accept_local') && !l.includes('.lo.'))
      .map((l) => ev('sysctl', T1, l)),
  ];
  if (prev === null) return out;
  out.push(ev('iptables', time, lineWith(time, 'iptables-save.txt', '--match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN')));
  // One row per CPU after the header; each CPU's in_martian_src rose, quoted before and after.
  const before = recorded(prev, 'stat-rt_cache.txt').slice(1, 3);
  const after = recorded(time, 'stat-rt_cache.txt').slice(1, 3);
  for (let cpu = 0; cpu < 2; cpu++) out.push(ev('rt-cache-stat', prev, before[cpu] ?? ''), ev('rt-cache-stat', time, after[cpu] ?? ''));
  return out;
}

/** The EndpointSlice's endpoint as the recorded API listed it (keys sorted), quoted when the API names the pod. */
const SLICE_EVIDENCE = ev(
  'kubernetes',
  LISTED,
  'endpointslice hc/web-8kx2q: {"addresses":["198.19.1.10"],"conditions":{"ready":true,"serving":true,"terminating":false},"nodeName":"node-1","targetRef":{"kind":"Pod","name":"web","namespace":"hc","uid":"c9e24d17-8a5b-4b3e-b1f0-6f2a9d0c4e58"}}',
);
const POD_SENTENCE = `. The endpoint is pod hc/web on node node-1; the API had it ready since ${LISTED}`;

const warningSummary = (service: string): string =>
  `198.18.100.20 (load balancer address of ${service}) is bound on node-1 (kube-ipvs0) and accept_local is off: a load balancer whose health checks come from 198.18.100.20 (to port 32000) will see this node as unhealthy`;
const errorSummary = (service: string): string =>
  `packets are being dropped on node-1 while 198.18.100.20 (load balancer address of ${service}) is a local address here (kube-ipvs0) and accept_local is off: NodePort rules counted packets that no conntrack entry shows and the kernel counted 4 more martian-source packets (in_martian_src, from any source on this host); health checks a load balancer sends from 198.18.100.20 to port 32000 are dropped this way before conntrack sees them`;
const TUPLE = { proto: 'tcp', src: '198.18.100.20', sport: null, dst: '198.18.0.11', dport: 32000 };

async function replayed(dir: string, kube?: string): Promise<FindingLine[]> {
  const { log } = captureLog();
  return replay(dir, log, undefined, kube === undefined ? {} : { kube });
}

/** The finding lines in order, as severity@firstSeen, for asserting the sequence a person tailing the log sees. */
const sequence = (lines: readonly FindingLine[]): string[] => lines.map((l) => `${l.finding} ${l.severity} ${l.service ?? '-'} @${l.firstSeen}`);

/** What the API-named runs must print: the same finding whether or not the ipsets were there. */
function expectNamedByApi(lines: readonly FindingLine[]): void {
  // One finding, named once: the IPVS virtual server is not reported again beside the Service.
  expect(sequence(lines)).toEqual([
    `lb-healthcheck-dropped warning hc/web:http @${T1}`,
    `lb-healthcheck-dropped error hc/web:http @${T2}`,
    `lb-healthcheck-dropped error hc/web:http @${T3}`,
  ]);
  const [warning, error] = lines;
  expect(warning).toMatchObject({ tuple: TUPLE, endpoint: '198.19.1.10:8080', pod: 'hc/web', summary: `${warningSummary('hc/web:http')}${POD_SENTENCE}` });
  expect(warning?.evidence).toEqual([...nodeEvidence(T1, null), SLICE_EVIDENCE]);
  expect(error).toMatchObject({
    tuple: TUPLE,
    endpoint: '198.19.1.10:8080',
    pod: 'hc/web',
    summary: `${errorSummary('hc/web:http')}${POD_SENTENCE}`,
    details: { loadBalancerIP: '198.18.100.20', healthCheckPort: 32000, externalTrafficPolicy: 'Local', healthCheckNodePort: 32000, ipMode: 'VIP', martianRise: 4, counterRises: 1 },
  });
  expect(error?.evidence).toEqual([...nodeEvidence(T2, T1), SLICE_EVIDENCE]);
  // The third step's rises are folded into one line that says so.
  expect(lines[2]?.summary).toBe(`1 more time between ${T3} and ${T3} from 1 client tuple: tcp 198.18.100.20:- -> 198.18.0.11:32000. Latest: ${errorSummary('hc/web:http')}${POD_SENTENCE}`);
  expect(lines[2]?.evidence).toEqual([...nodeEvidence(T3, T2), SLICE_EVIDENCE]);
}

const scratch = mkdtempSync(join(tmpdir(), 'conntrail-seed-003-kube-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** The recorded API list's items (Service, EndpointSlice, Pod) of a fixture. */
const listedItems = (kubeDir: string): Record<string, unknown>[] =>
  (JSON.parse(readFileSync(join(kubeDir, '2026-12-01T20:09:00Z/get-services-endpointslices-pods.json'), 'utf8')) as { items: Record<string, unknown>[] }).items;
const writeRecording = (name: string, files: Record<string, string>): string => {
  const dir = join(scratch, name);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(dir, path, '..'), { recursive: true });
    writeFileSync(join(dir, path), text);
  }
  return dir;
};

describe('conntrail replay of seed 003 in IPVS mode', () => {
  it('with ipset-save.txt, no API: the LB address on kube-ipvs0 is a warning first, an error once martians and the Local NodePort rule rise', async () => {
    const lines = await replayed(WITH_IPSETS);
    // Without the API the Service is the IPVS virtual server; the ClusterIP bound beside it on kube-ipvs0 is never taken for an LB address.
    expect(sequence(lines)).toEqual([
      `lb-healthcheck-dropped warning TCP 198.18.100.20:80 @${T1}`,
      `lb-healthcheck-dropped error TCP 198.18.100.20:80 @${T2}`,
      `lb-healthcheck-dropped error TCP 198.18.100.20:80 @${T3}`,
    ]);
    const [warning, error] = lines;
    expect(warning).toMatchObject({ tuple: TUPLE, summary: warningSummary('TCP 198.18.100.20:80') });
    expect(warning?.pod).toBeUndefined();
    expect(warning?.evidence).toEqual(nodeEvidence(T1, null));
    expect(error).toMatchObject({ tuple: TUPLE, summary: errorSummary('TCP 198.18.100.20:80'), details: { loadBalancerIP: '198.18.100.20', healthCheckPort: 32000, martianRise: 4, counterRises: 1 } });
    expect(error?.evidence).toEqual(nodeEvidence(T2, T1));
  });

  it('without ipset-save.txt, no API: nothing tells the LB address from a ClusterIP on kube-ipvs0, and conntrail claims nothing', async () => {
    expect(await replayed(NO_IPSETS)).toEqual([]);
  });

  it('without ipset-save.txt, with the API: the API says 198.18.100.20 is the LB ingress of a Local Service, so the warning and the error come back, named hc/web:http with health-check port 32000', async () => {
    expectNamedByApi(await replayed(NO_IPSETS, API_LB_LOCAL));
  });

  it('with ipset-save.txt and the API: the same finding, named by the API, not once per IPVS virtual server', async () => {
    const lines = await replayed(WITH_IPSETS, API_LB_LOCAL);
    expectNamedByApi(lines);
    expect(lines).toEqual(await replayed(NO_IPSETS, API_LB_LOCAL));
  });

  it('without ipset-save.txt, with an API whose hc/web is a ClusterIP Service (no LB ingress): no lb-healthcheck-dropped finding', async () => {
    expect(await replayed(NO_IPSETS, API_CLUSTER_IP)).toEqual([]);
  });

  it('each step sees the API as it was at its time: a Service made LoadBalancer between the second and third steps is found from the third on', async () => {
    const [lbService] = listedItems(API_LB_LOCAL);
    const kube = writeRecording('becomes-lb', {
      '2026-12-01T20:09:00Z/get-services-endpointslices-pods.json': readFileSync(join(API_CLUSTER_IP, '2026-12-01T20:09:00Z/get-services-endpointslices-pods.json'), 'utf8'),
      // A watch event as the API streams it, one per line.
      '2026-12-01T20:09:05Z/watch-services.json': `${JSON.stringify({ type: 'MODIFIED', object: lbService })}\n`,
    });
    const lines = await replayed(NO_IPSETS, kube);
    // No config change at the third step, only martians: an error without a warning first.
    expect(sequence(lines)).toEqual([`lb-healthcheck-dropped error hc/web:http @${T3}`]);
    expect(lines[0]).toMatchObject({ summary: `${errorSummary('hc/web:http')}. The endpoint is pod hc/web on node node-1; the API had it ready since ${LISTED}`, details: { healthCheckNodePort: 32000, externalTrafficPolicy: 'Local' } });
    expect(lines[0]?.evidence).toEqual([...nodeEvidence(T3, T2), SLICE_EVIDENCE]);
  });

  it('and the other way: once a later list shows hc/web as a ClusterIP Service, the steps after it find nothing', async () => {
    const [, slice, pod] = listedItems(API_LB_LOCAL);
    const [clusterIpService] = listedItems(API_CLUSTER_IP);
    const kube = writeRecording('becomes-cluster-ip', {
      '2026-12-01T20:09:00Z/get-services-endpointslices-pods.json': readFileSync(join(API_LB_LOCAL, '2026-12-01T20:09:00Z/get-services-endpointslices-pods.json'), 'utf8'),
      // A relist as kubectl prints it (kind List), pretty-printed.
      '2026-12-01T20:09:05Z/get-services-endpointslices-pods.json': JSON.stringify({ apiVersion: 'v1', kind: 'List', metadata: { resourceVersion: '' }, items: [clusterIpService, slice, pod] }, null, 4),
    });
    expect(sequence(await replayed(NO_IPSETS, kube))).toEqual([`lb-healthcheck-dropped warning hc/web:http @${T1}`, `lb-healthcheck-dropped error hc/web:http @${T2}`]);
  });
});
