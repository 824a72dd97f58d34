// Findings as Kubernetes Events, against the in-process API server: seed
// 003's IPVS health-check rollout replayed with what its API said
// (`conntrail replay … --kube …`), each finding line handed to the Events
// recorder as the collector hands it, and the Events read back from the API
// as `kubectl get events` would.
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { replay } from '../../../bin/replay.ts';
import { readKubeRecording } from '../../../bin/replay-kube.ts';
import type { FindingLine } from '../../../collector/detection/aggregate.ts';
import { KubeCatalog } from '../../../collector/kube/catalog.ts';
import { microTime, NOTE_LIMIT_BYTES, reasonOf, startKubeEvents, truncateBytes, type KubeEvents } from '../../../collector/kube/events.ts';
import { Bounds } from '../../../collector/state/bounds.ts';
import { captureLog, collectJsonLines, waitFor } from '../../helpers/capture-log.ts';
import { cli } from '../../helpers/collector-process.ts';
import { nodeBinary } from '../../lab/traffic.ts';
import { KubeApiServer, type Resource } from '../../helpers/kube-api-server.ts';

const root = new URL('../../..', import.meta.url).pathname;
const TIMELINE = join(root, 'test/fixtures/timelines/seed-003-ipvs-lb-healthcheck');
const KUBE = join(root, 'test/fixtures/timelines/kube/seed-003-hc-web-lb-local');
const RECORDED = join(KUBE, '2026-12-01T20:09:00Z/get-services-endpointslices-pods.json');
const POD_NAME = 'conntrail-collector-6d9f8b7c5-x2x4z';

type Obj = Record<string, unknown> & { metadata: { namespace: string; name: string; uid: string } };
/** The recorded `kubectl get services,endpointslices,pods -A -o json`: what the API server holds. */
const recorded = (JSON.parse(readFileSync(RECORDED, 'utf8')) as { items: (Obj & { kind: string })[] }).items;
const uidOf = (kind: string): string => recorded.find((o) => o.kind === kind)?.metadata.uid ?? '';
const RESOURCE: Record<string, Resource> = { Service: 'services', EndpointSlice: 'endpointslices', Pod: 'pods' };

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Rig {
  readonly server: KubeApiServer;
  readonly events: KubeEvents;
  readonly bounds: Bounds;
  readonly lines: Record<string, unknown>[];
  readonly clock: { now: number };
  /** The replay's finding lines, each handed to the recorder as it was emitted. */
  replayed(): Promise<FindingLine[]>;
  /** The Events API requests seen, as `METHOD status`. */
  eventRequests(): string[];
}

async function rig(opts: { forbidden?: boolean; disabled?: boolean } = {}): Promise<Rig & { started: KubeEvents | null }> {
  const server = new KubeApiServer();
  await server.listen();
  for (const o of recorded) {
    const resource = RESOURCE[o.kind];
    if (resource !== undefined) server.apply(resource, o);
  }
  if (opts.forbidden === true) server.forbidden.add('events');
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-events-test-'));
  const { log, lines } = captureLog();
  const clock = { now: Date.parse('2026-12-01T20:10:00Z') };
  const catalog = new KubeCatalog();
  for (const e of readKubeRecording(KUBE)) catalog.apply(e);
  const bounds = new Bounds(log, () => clock.now);
  const started = await startKubeEvents({ log, disabled: opts.disabled === true, kube: catalog, bounds, kubeconfig: server.writeKubeconfig(dir), env: { POD_NAME }, now: () => clock.now });
  cleanups.push(async () => {
    await started?.stop(1_000);
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const events = started as KubeEvents;
  return {
    server,
    events,
    started,
    bounds,
    lines,
    clock,
    replayed: () => replay(TIMELINE, captureLog().log, (line) => started?.finding(line), { kube: KUBE }),
    eventRequests: () => server.requests.filter((r) => r.path.startsWith('/apis/events.k8s.io/')).map((r) => `${r.method} ${r.status}`),
  };
}

type Event = {
  metadata: { name: string; namespace: string };
  type: string;
  reason: string;
  action: string;
  note: string;
  eventTime: string;
  regarding: Record<string, string>;
  related?: Record<string, string>;
  reportingController: string;
  reportingInstance: string;
  series?: { count: number; lastObservedTime: string };
};
const eventsOn = (server: KubeApiServer, kind: string): Event[] => (server.events() as Event[]).filter((e) => e.regarding.kind === kind);
/** The Event of drops seen (action Detected), apart from the latent-risk one (RiskSeen): an Event's note never changes. */
const errorEventOn = (server: KubeApiServer, kind: string): Event | undefined => eventsOn(server, kind).find((e) => e.action === 'Detected');
const riskEventOn = (server: KubeApiServer, kind: string): Event | undefined => eventsOn(server, kind).find((e) => e.action === 'RiskSeen');

describe('Kubernetes Events for findings', { timeout: 30_000 }, () => {
  it('puts a Warning on the Service and on the endpoint pod, with the finding as its note, the latent risk and the drops as separate Events, and folds the repeats into the series by PATCH', async () => {
    const r = await rig();
    const findings = await r.replayed();
    await r.events.idle();
    // Seed 003 with its API: a warning then two errors, all lb-healthcheck-dropped on hc/web, endpoint pod hc/web.
    expect(findings.map((f) => [f.finding, f.severity, f.service, f.pod])).toEqual([
      ['lb-healthcheck-dropped', 'warning', 'hc/web:http', 'hc/web'],
      ['lb-healthcheck-dropped', 'error', 'hc/web:http', 'hc/web'],
      ['lb-healthcheck-dropped', 'error', 'hc/web:http', 'hc/web'],
    ]);
    const [warning, firstError, last] = findings as [FindingLine, FindingLine, FindingLine];
    expect(r.server.events()).toHaveLength(4);
    const serviceRef = { kind: 'Service', apiVersion: 'v1', namespace: 'hc', name: 'web', uid: uidOf('Service') };
    const common = { type: 'Warning', reason: 'LbHealthcheckDropped', reportingController: 'conntrail.io/collector', reportingInstance: POD_NAME };
    // The latent risk: one occurrence, its own note.
    expect(riskEventOn(r.server, 'Service')).toMatchObject({ ...common, metadata: { namespace: 'hc' }, action: 'RiskSeen', note: warning.summary, eventTime: microTime(warning.time), regarding: serviceRef });
    expect(riskEventOn(r.server, 'Service')?.series).toBeUndefined();
    // The drops: the error's own note, and the repeat in its series.
    expect(errorEventOn(r.server, 'Service')).toMatchObject({
      ...common,
      metadata: { namespace: 'hc' },
      action: 'Detected',
      note: firstError.summary,
      eventTime: microTime(firstError.time),
      regarding: serviceRef,
      series: { count: 2, lastObservedTime: microTime(Date.parse(last.lastSeen)) },
    });
    expect(errorEventOn(r.server, 'Service')?.metadata.name).toMatch(/^web\.[0-9a-f]+$/);
    expect(errorEventOn(r.server, 'Pod')).toMatchObject({
      ...common,
      action: 'Detected',
      note: firstError.summary,
      regarding: { kind: 'Pod', apiVersion: 'v1', namespace: 'hc', name: 'web', uid: uidOf('Pod') },
      related: serviceRef,
      series: { count: 2 },
    });
    // A create per object and action, then a strategic merge PATCH per repeat; the uids were read once each.
    expect(r.eventRequests()).toEqual(['POST 201', 'POST 201', 'POST 201', 'POST 201', 'PATCH 200', 'PATCH 200']);
    expect(r.server.requests.filter((q) => q.method === 'GET' && /\/namespaces\/hc\/(services|pods)\/web$/.test(q.path)).map((q) => q.path)).toEqual(['/api/v1/namespaces/hc/services/web', '/api/v1/namespaces/hc/pods/web']);
    expect(r.events.stats()).toMatchObject({ created: 4, patched: 2, throttled: 0, errors: 0, forbidden: 0 });
    expect(r.lines.filter((l) => l.level === 40 || l.level === 50)).toEqual([]);
  });

  it('shows them in `kubectl describe service` and `kubectl describe pod`: Warning, the reason, the series as (x2 over …) where kubectl shows series, From conntrail.io/collector, the note', async () => {
    const r = await rig();
    const [warning, firstError] = (await r.replayed()) as [FindingLine, FindingLine, FindingLine];
    await r.events.idle();
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-events-kubectl-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const kubeconfig = r.server.writeKubeconfig(dir);
    // The real kubectl (setup installs it), asynchronously: the API server answers from this process.
    const describe = async (kind: string): Promise<string> => {
      try {
        return (await promisify(execFile)('kubectl', ['--kubeconfig', kubeconfig, '--cache-dir', join(dir, 'cache'), 'describe', kind, '-n', 'hc', 'web'], { encoding: 'utf8' })).stdout;
      } catch (err) {
        const e = err as NodeJS.ErrnoException & { stderr?: string };
        throw new Error(e.code === 'ENOENT' ? 'kubectl not installed: run npm run setup (it installs Debian kubernetes-client where there is no kubectl)' : `kubectl describe ${kind} failed: ${e.stderr ?? e.message}`);
      }
    };
    const outputs = { service: await describe('service'), pod: await describe('pod') };
    const version = JSON.parse((await promisify(execFile)('kubectl', ['version', '--client', '-o', 'json'], { encoding: 'utf8' })).stdout) as { clientVersion: { minor: string } };
    // kubectl shows an events.k8s.io series (`(xN over …)`) from 1.23 on (kubernetes/kubernetes#104482); before, the first occurrence's age only.
    const showsSeries = Number.parseInt(version.clientVersion.minor, 10) >= 23;
    // For the README's "Events": what kubectl printed, and the Events it read, written only when asked for.
    const dump = process.env.CONNTRAIL_EVENTS_DUMP;
    if (dump) {
      mkdirSync(dump, { recursive: true });
      writeFileSync(join(dump, 'events.json'), `${JSON.stringify(r.server.events(), null, 2)}\n`);
      for (const [kind, text] of Object.entries(outputs)) writeFileSync(join(dump, `describe-${kind}.txt`), text);
    }
    for (const text of Object.values(outputs)) {
      const table = text.slice(text.indexOf('\nEvents:\n') + 1).split('\n');
      expect(table.slice(0, 3).map((l) => l.trim().split(/\s+/))).toEqual([['Events:'], ['Type', 'Reason', 'Age', 'From', 'Message'], ['----', '------', '----', '----', '-------']]);
      // Oldest first: the risk once, then the drops with their repeat; kubectl's columns are tab-aligned, split on the two-space gutter.
      const rows = table.slice(3).filter((l) => l.trim() !== '').map((l) => l.trim().split(/ {2,}/));
      expect(rows.map(([type, reason, , from]) => [type, reason, from])).toEqual([
        ['Warning', 'LbHealthcheckDropped', 'conntrail.io/collector'],
        ['Warning', 'LbHealthcheckDropped', 'conntrail.io/collector'],
      ]);
      expect(rows[0]?.[2]).toMatch(/^\S+$/);
      expect(rows[1]?.[2]).toMatch(showsSeries ? /^\S+ \(x2 over \S+\)$/ : /^\S+$/);
      expect(rows.map((row) => row.slice(4).join('  '))).toEqual([warning.summary, firstError.summary]);
    }
    // A kubectl that finds a Service's endpoints by its EndpointSlices (newer ones; older read core v1 Endpoints, not served here) lists the pod's.
    if (r.server.requests.some((q) => q.path === '/apis/discovery.k8s.io/v1/namespaces/hc/endpointslices')) expect(outputs.service).toMatch(/\nEndpoints: +198\.19\.1\.10:8080\n/);
  });

  it('starts a new Event carrying the series on when the API has dropped the old one (its TTL), as client-go does', async () => {
    const r = await rig();
    const [, firstError, again] = (await r.replayed()) as [FindingLine, FindingLine, FindingLine];
    await r.events.idle();
    const before = errorEventOn(r.server, 'Service');
    expect(before?.series?.count).toBe(2);
    r.server.expireEvent('hc', before?.metadata.name ?? '');
    r.clock.now += 1_000;
    r.events.finding(again);
    await r.events.idle();
    const after = eventsOn(r.server, 'Service').filter((e) => e.action === 'Detected');
    expect(after).toHaveLength(1);
    expect(after[0]?.metadata.name).not.toBe(before?.metadata.name);
    expect(after[0]).toMatchObject({ note: firstError.summary, series: { count: 3 } });
    // The Service's PATCH finds nothing and a create follows; the pod's Event is still there.
    expect(r.eventRequests().slice(-3)).toEqual(['PATCH 404', 'POST 201', 'PATCH 200']);
  });

  it('bounds each object to a burst of 25 requests, then one per 5 minutes, says so once, and writes the held-back count later', async () => {
    const r = await rig();
    const findings = await r.replayed();
    await r.events.idle();
    const line = findings[2] as FindingLine;
    // 3 requests per object so far (the risk's create, the drops' create and a patch); 40 more repeats at the same instant.
    for (let i = 0; i < 40; i++) r.events.finding(line);
    await r.events.idle();
    expect(r.eventRequests().filter((q) => q === 'POST 201' || q === 'PATCH 200')).toHaveLength(2 * 25);
    expect(errorEventOn(r.server, 'Service')?.series?.count).toBe(24);
    expect(r.events.stats().throttled).toBe(2 * (3 + 40 - 25));
    const rate = r.bounds.list().filter((b) => b.bound === 'kubernetes-events-rate');
    expect(rate.map((b) => [b.subject, b.limit, b.hits])).toEqual([
      ['Service hc/web', 25, 18],
      ['Pod hc/web', 25, 18],
    ]);
    expect(r.lines.filter((l) => l.msg === 'bound hit: kubernetes-events-rate').map((l) => l.subject)).toEqual(['Service hc/web', 'Pod hc/web']);
    // Five minutes on, one token each: the sweep writes the whole count in one PATCH per object.
    r.clock.now += 5 * 60_000;
    r.events.sweep();
    await r.events.idle();
    expect(r.eventRequests().filter((q) => q === 'PATCH 200')).toHaveLength(2 * (25 - 2) + 2);
    expect(errorEventOn(r.server, 'Service')?.series?.count).toBe(42);
    expect(errorEventOn(r.server, 'Pod')?.series?.count).toBe(42);
    expect(r.server.events()).toHaveLength(4);
    // Nothing more to write: a sweep with tokens to spare sends nothing.
    r.clock.now += 60 * 60_000;
    const sent = r.eventRequests().length;
    r.events.sweep();
    await r.events.idle();
    expect(r.eventRequests()).toHaveLength(sent);
  });

  it('logs a 403 once and the findings keep flowing', async () => {
    const plain = await replay(TIMELINE, captureLog().log, undefined, { kube: KUBE });
    const r = await rig({ forbidden: true });
    const findings = await r.replayed();
    await r.events.idle();
    expect(findings).toEqual(plain);
    expect(r.server.events()).toEqual([]);
    // Every line tried both objects and was refused; one line says why.
    expect(r.eventRequests()).toEqual(['POST 403', 'POST 403', 'POST 403', 'POST 403', 'POST 403', 'POST 403']);
    const said = r.lines.filter((l) => l.kubernetesEvents === 'forbidden');
    expect(said).toHaveLength(1);
    expect(said[0]?.msg).toMatch(/403.*create and patch on events\.k8s\.io events/);
    expect(String(said[0]?.reason)).toContain('cannot create resource "events" in API group "events.k8s.io" in the namespace "hc"');
    expect(r.events.stats()).toMatchObject({ created: 0, forbidden: 6 });
  });

  it('sends nothing with --no-events, and says so once', async () => {
    const r = await rig({ disabled: true });
    expect(r.started).toBeNull();
    const findings = await r.replayed();
    expect(findings).toHaveLength(3);
    expect(r.eventRequests()).toEqual([]);
    expect(r.server.events()).toEqual([]);
    expect(r.lines.filter((l) => l.kubernetesEvents === 'off').map((l) => l.msg)).toEqual(['Kubernetes Events off (--no-events): findings are only logged']);
  });

  it('`conntrail collector` turns Events on with API access, naming its pod as reportingInstance, and --no-events turns them off', async () => {
    const server = new KubeApiServer();
    await server.listen();
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-events-cli-'));
    cleanups.push(async () => {
      await server.close();
      rmSync(dir, { recursive: true, force: true });
    });
    const kubeconfig = server.writeKubeconfig(dir);
    const said: Record<string, unknown>[] = [];
    for (const flags of [[], ['--no-events']]) {
      const child = spawn(nodeBinary(), [cli, 'collector', '--listen', '127.0.0.1:0', '--kubeconfig', kubeconfig, '--capture', 'off', ...flags], { env: { ...process.env, POD_NAME, CONNTRAIL_TOKEN: 'events-test' }, stdio: ['ignore', 'pipe', 'pipe'] });
      cleanups.push(() => void child.kill('SIGKILL'));
      const lines: Record<string, unknown>[] = [];
      collectJsonLines(child.stdout, lines);
      await waitFor('collector listening', () => lines.find((l) => l.msg === 'collector listening'), 15_000);
      said.push(...lines.filter((l) => l.kubernetesEvents !== undefined));
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
    }
    expect(said.map((l) => [l.kubernetesEvents, l.reportingInstance])).toEqual([
      ['on', POD_NAME],
      ['off', undefined],
    ]);
  });

  it('posts no Event for a Service name the API never gave (node data alone) and never puts such a name in a path', async () => {
    const r = await rig();
    const findings = await r.replayed();
    await r.events.idle();
    const requests = r.server.requests.length;
    const line = findings[0] as FindingLine;
    r.events.finding({ ...line, service: 'hc/not-in-api:http', pod: null });
    r.events.finding({ ...line, service: 'hc/..%2f..:http', pod: 'hc/../../api' });
    r.events.finding({ ...line, service: null, pod: 'Hc/Web' });
    await r.events.idle();
    expect(r.server.requests.slice(requests)).toEqual([]);
  });

  it('cuts a note to the API\'s 1024 bytes on a character boundary and derives reasons from the kind', () => {
    const long = 'é'.repeat(600);
    const cut = truncateBytes(long);
    expect(Buffer.byteLength(cut)).toBeLessThanOrEqual(NOTE_LIMIT_BYTES);
    expect(cut.endsWith('…')).toBe(true);
    expect(cut.slice(0, -1)).toBe('é'.repeat((NOTE_LIMIT_BYTES - 3) / 2 | 0));
    expect(truncateBytes('short')).toBe('short');
    expect(['port-reuse-to-removed-endpoint', 'stale-nat-to-removed-endpoint', 'lb-hairpin', 'lb-healthcheck-dropped', 'conntrack-pressure', 'unanswered-syn'].map(reasonOf)).toEqual([
      'PortReuseToRemovedEndpoint',
      'StaleNatToRemovedEndpoint',
      'LbHairpin',
      'LbHealthcheckDropped',
      'ConntrackPressure',
      'UnansweredSyn',
    ]);
  });

  it('posts a note longer than the limit cut, which the API then accepts', async () => {
    const r = await rig();
    const line = (await r.replayed())[0] as FindingLine;
    await r.events.idle();
    // Another kind on the same objects: a series of its own, on a new reason.
    r.events.finding({ ...line, finding: 'unanswered-syn', summary: `${line.summary} ${'x'.repeat(2_000)}` });
    await r.events.idle();
    const created = (r.server.events() as Event[]).filter((e) => e.reason === 'UnansweredSyn');
    expect(created.map((e) => e.regarding.kind)).toEqual(['Service', 'Pod']);
    for (const e of created) {
      expect(Buffer.byteLength(e.note)).toBeLessThanOrEqual(NOTE_LIMIT_BYTES);
      expect(Buffer.byteLength(e.note)).toBeGreaterThan(NOTE_LIMIT_BYTES - 4);
      expect(e.note.startsWith(line.summary)).toBe(true);
      expect(e.note.endsWith('x…')).toBe(true);
    }
    expect(r.server.requests.filter((q) => q.status === 422)).toEqual([]);
  });
});
