// Recorded Kubernetes API data for `conntrail replay DIR --kube KUBE_DIR`:
// kubectl's and the API's own JSON read into the KubeEvents the collector's
// catalog takes, and every unreadable recording refused with the file named.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { jsonObjects, readKubeRecording } from '../../bin/replay-kube.ts';
import { replay } from '../../bin/replay.ts';
import { KubeCatalog } from '../../collector/kube/catalog.ts';
import { isConntrailError } from '../../contract/errors.ts';
import { captureLog } from '../helpers/capture-log.ts';

const root = new URL('../..', import.meta.url).pathname;
const timelines = join(root, 'test/fixtures/timelines');
const API_LB_LOCAL = join(timelines, 'kube/seed-003-hc-web-lb-local');
const LIST_FILE = '2026-12-01T20:09:00Z/get-services-endpointslices-pods.json';
const run = promisify(execFile);

type Obj = Record<string, unknown>;
const items = (JSON.parse(readFileSync(join(API_LB_LOCAL, LIST_FILE), 'utf8')) as { items: Obj[] }).items;
const byKind = (kind: string): Obj => {
  const o = items.find((i) => i.kind === kind);
  if (o === undefined) throw new Error(`the seed-003 API fixture has no ${kind}`);
  return o;
};
const SERVICE = byKind('Service');
const SLICE = byKind('EndpointSlice');
const POD = byKind('Pod');

const scratch = mkdtempSync(join(tmpdir(), 'conntrail-replay-kube-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));
let n = 0;
/** A recording in a fresh directory: relative path → text. */
function recording(files: Record<string, string>): string {
  const dir = join(scratch, `r${n++}`);
  mkdirSync(dir);
  for (const [path, text] of Object.entries(files)) {
    mkdirSync(join(dir, path, '..'), { recursive: true });
    writeFileSync(join(dir, path), text);
  }
  return dir;
}

const at = (iso: string): number => Date.parse(iso);
const summary = (events: ReturnType<typeof readKubeRecording>): string[] =>
  events.map((e) => `${new Date(e.time).toISOString()} ${e.kind} ${e.kind === 'service' ? `${e.service.namespace}/${e.service.name} ${e.service.type}` : e.kind === 'slice' ? `${e.slice.namespace}/${e.slice.name}` : `${e.namespace}/${e.name}`}`);

function badInput(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(isConntrailError(err, 'BAD_INPUT')).toBe(true);
    return (err as Error).message;
  }
  throw new Error('expected BAD_INPUT');
}

describe('reading a recorded Kubernetes API directory', () => {
  it('reads the seed 003 kubectl List: the Local LoadBalancer Service and its EndpointSlice at the list time; the Pod is accepted and not used', () => {
    const events = readKubeRecording(API_LB_LOCAL);
    expect(summary(events)).toEqual(['2026-12-01T20:09:00.000Z service hc/web LoadBalancer', '2026-12-01T20:09:00.000Z slice hc/web-8kx2q']);
    const catalog = new KubeCatalog();
    for (const e of events) catalog.apply(e);
    const t = at('2026-12-01T20:09:03.521Z');
    expect(catalog.serviceForAddress('198.18.100.20', 80, 'tcp', t)).toMatchObject({
      namespace: 'hc',
      name: 'web',
      type: 'LoadBalancer',
      externalTrafficPolicy: 'Local',
      healthCheckNodePort: 32000,
      clusterIPs: ['198.18.64.20'],
      ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 31199, targetPort: 8080 }],
      loadBalancerIngress: [{ ip: '198.18.100.20', hostname: null, ipMode: 'VIP' }],
    });
    expect(catalog.podAt('198.19.1.10', t)).toMatchObject({ state: 'ready', span: { service: 'hc/web', pod: 'hc/web', nodeName: 'node-1', port: 8080 } });
    // Nothing is known before the list was taken.
    expect(catalog.serviceAt('hc/web', at('2026-12-01T20:08:59Z'))).toBeNull();
  });

  it('reads watch events back to back, pretty-printed as kubectl prints them and one per line as the API streams them, in file-name order within a time', () => {
    const modified = { ...SERVICE, spec: { ...(SERVICE.spec as Obj), externalTrafficPolicy: 'Cluster' } };
    const dir = recording({
      '1796155740000/a.json': [{ type: 'ADDED', object: SERVICE }, { type: 'ADDED', object: SLICE }, { type: 'ADDED', object: POD }].map((e) => JSON.stringify(e, null, 4)).join('\n'),
      '1796155740000/b.jsonl': `${JSON.stringify({ type: 'BOOKMARK', object: { kind: 'Service', apiVersion: 'v1', metadata: { resourceVersion: '48300' } } })}\n${JSON.stringify({ type: 'MODIFIED', object: modified })}\n`,
      '2026-12-01T20:09:05Z/c.json': `${JSON.stringify({ type: 'DELETED', object: SLICE })}\n${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 410, reason: 'Expired' } })}\n`,
    });
    const events = readKubeRecording(dir);
    expect(summary(events)).toEqual([
      '2026-12-01T20:09:00.000Z service hc/web LoadBalancer',
      '2026-12-01T20:09:00.000Z slice hc/web-8kx2q',
      '2026-12-01T20:09:00.000Z service hc/web LoadBalancer',
      '2026-12-01T20:09:05.000Z slice-deleted hc/web-8kx2q',
    ]);
    const catalog = new KubeCatalog();
    for (const e of events) catalog.apply(e);
    // The later event of the same time wins, as in the collector.
    expect(catalog.serviceAt('hc/web', at('2026-12-01T20:09:01Z'))?.externalTrafficPolicy).toBe('Cluster');
    expect(catalog.podAt('198.19.1.10', at('2026-12-01T20:09:06Z'))?.state).toBe('removed');
  });

  it('takes a list as the whole state of the kinds it lists, as an informer relist does', () => {
    const otherService = { ...SERVICE, metadata: { ...(SERVICE.metadata as Obj), name: 'api', uid: 'a1' } };
    const list = (its: Obj[], kind = 'List') => JSON.stringify({ apiVersion: 'v1', kind, metadata: { resourceVersion: '' }, items: its });
    const dir = recording({
      '2026-12-01T20:09:00Z/all.json': list([SERVICE, otherService, SLICE, POD]),
      // `kubectl get services -A -o json` lists Services only: the EndpointSlice is not said to be gone.
      '2026-12-01T20:09:01Z/services.json': list([SERVICE]),
      // The API's typed list covers its kind even when empty.
      '2026-12-01T20:09:02Z/endpointslices.json': JSON.stringify({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSliceList', metadata: { resourceVersion: '48400' }, items: [] }),
    });
    expect(summary(readKubeRecording(dir))).toEqual([
      '2026-12-01T20:09:00.000Z service hc/web LoadBalancer',
      '2026-12-01T20:09:00.000Z service hc/api LoadBalancer',
      '2026-12-01T20:09:00.000Z slice hc/web-8kx2q',
      '2026-12-01T20:09:01.000Z service hc/web LoadBalancer',
      '2026-12-01T20:09:01.000Z service-deleted hc/api',
      '2026-12-01T20:09:02.000Z slice-deleted hc/web-8kx2q',
    ]);
  });

  it('reads items of the API\'s typed lists, which carry no kind of their own', () => {
    const { kind: _k, apiVersion: _v, ...bare } = SLICE;
    const dir = recording({ '2026-12-01T20:09:00Z/slices.json': JSON.stringify({ apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSliceList', metadata: {}, items: [bare] }) });
    expect(summary(readKubeRecording(dir))).toEqual(['2026-12-01T20:09:00.000Z slice hc/web-8kx2q']);
  });

  const T = '2026-12-01T20:09:00Z';
  const { metadata: _m, ...serviceWithoutMetadata } = SERVICE;
  it.each<[string, Record<string, string>, string, RegExp]>([
    ['a file that is not JSON', { [`${T}/x.json`]: '{"kind": "List", "items": [' }, `${T}/x.json:1`, /not closed/],
    ['JSON that is broken inside', { [`${T}/x.json`]: '{"kind": List}' }, `${T}/x.json:1`, /not JSON/],
    ['YAML', { [`${T}/x.json`]: 'apiVersion: v1\nkind: List\n' }, `${T}/x.json:1`, /expected a JSON object/],
    ['an empty file', { [`${T}/x.json`]: '\n' }, `${T}/x.json`, /empty/],
    ['a second object broken on line 3', { [`${T}/x.jsonl`]: `${JSON.stringify({ type: 'ADDED', object: SERVICE })}\n\n{"type": "ADDED", "object": {"kind": "Service",}}\n` }, `${T}/x.jsonl:3`, /not JSON/],
    ['a kind conntrail does not read', { [`${T}/x.json`]: JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [SERVICE, { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { namespace: 'hc', name: 'web' } }] }) }, `${T}/x.json:1 items[1]`, /kind Deployment/],
    ['an item without kind in a kubectl List', { [`${T}/x.json`]: JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [serviceWithoutMetadata.spec] }) }, `${T}/x.json:1 items[0]`, /without kind/],
    ['a v1beta1 EndpointSlice', { [`${T}/x.json`]: JSON.stringify({ ...SLICE, apiVersion: 'discovery.k8s.io/v1beta1' }) }, `${T}/x.json:1`, /discovery\.k8s\.io\/v1beta1: conntrail reads discovery\.k8s\.io\/v1/],
    ['a Service without metadata', { [`${T}/x.json`]: JSON.stringify({ type: 'ADDED', object: serviceWithoutMetadata }) }, `${T}/x.json:1 (ADDED)`, /metadata\.namespace and metadata\.name are required/],
    ['an EndpointSlice without addressType', { [`${T}/x.json`]: JSON.stringify({ ...SLICE, addressType: undefined }) }, `${T}/x.json:1`, /addressType is required/],
    ['an unknown watch event type', { [`${T}/x.json`]: JSON.stringify({ type: 'UPSERTED', object: SERVICE }) }, `${T}/x.json:1`, /watch event type "UPSERTED"/],
    ['a list without items', { [`${T}/x.json`]: JSON.stringify({ apiVersion: 'v1', kind: 'ServiceList' }) }, `${T}/x.json:1`, /without an items array/],
    ['a file that is not .json', { [`${T}/x.yaml`]: 'kind: List' }, `${T}/x.yaml`, /not a \.json or \.jsonl file/],
    ['a directory that is not a time', { 'README/x.json': '{}' }, 'README', /not a time/],
    ['a file beside the time directories', { 'notes.txt': 'hi' }, 'notes.txt', /not a time/],
    ['a dangling link', { [`${T}/gone.json`]: '' }, `${T}/gone.json`, /cannot read it \(ENOENT/],
    ['a directory inside a time directory', { [`${T}/more/x.json`]: '{}' }, `${T}/more`, /not a \.json or \.jsonl file/],
  ])('refuses %s with BAD_INPUT naming where', (what, files, where, why) => {
    const dir = recording(files);
    if (what === 'a dangling link') {
      rmSync(join(dir, where));
      symlinkSync(join(dir, 'nowhere.json'), join(dir, where));
    }
    const message = badInput(() => readKubeRecording(dir));
    expect(message.startsWith(`${join(dir, where)}: `) || message.startsWith(`${join(dir, where)} `)).toBe(true);
    expect(message).toMatch(why);
  });

  it('refuses a missing directory, one with no time in it, and an empty time', () => {
    expect(badInput(() => readKubeRecording(join(scratch, 'nowhere')))).toMatch(`${join(scratch, 'nowhere')}: cannot read this recorded Kubernetes API directory (ENOENT`);
    expect(badInput(() => readKubeRecording(join(API_LB_LOCAL, LIST_FILE)))).toBe(`${join(API_LB_LOCAL, LIST_FILE)}: not a directory of recorded Kubernetes API data`);
    const empty = recording({});
    expect(badInput(() => readKubeRecording(empty))).toBe(`${empty}: holds no <time> directories`);
    mkdirSync(join(empty, '2026-12-01T20:09:00Z'));
    expect(badInput(() => readKubeRecording(empty))).toBe(`${join(empty, '2026-12-01T20:09:00Z')}: holds no recorded API file`);
  });

  it('splits back-to-back objects without being fooled by braces inside strings', () => {
    const text = `${JSON.stringify({ a: 'x}{"' })}\n  ${JSON.stringify({ b: ['}', { c: '\\"}' }] }, null, 2)}`;
    expect(jsonObjects(text, 'f').map((o) => o.value)).toEqual([{ a: 'x}{"' }, { b: ['}', { c: '\\"}' }] }]);
    expect(jsonObjects(text, 'f').map((o) => o.line)).toEqual([1, 2]);
  });
});

describe('conntrail replay DIR --kube KUBE_DIR', () => {
  const NO_IPSETS = join(timelines, 'seed-003-ipvs-lb-healthcheck-no-ipset');

  it('prints the finding lines named by the recorded API and exits 1 on the error', async () => {
    const err = await run(process.execPath, [join(root, 'bin/conntrail.js'), 'replay', NO_IPSETS, '--kube', API_LB_LOCAL]).catch((e: { code: number; stdout: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    const lines = (err as { stdout: string }).stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.map((l) => [l.level, l.finding, l.service, l.pod])).toEqual([
      [40, 'lb-healthcheck-dropped', 'hc/web:http', 'hc/web'],
      [50, 'lb-healthcheck-dropped', 'hc/web:http', 'hc/web'],
      [50, 'lb-healthcheck-dropped', 'hc/web:http', 'hc/web'],
    ]);
  });

  it('names the bad file and exits 2, without a stack trace, before printing any finding', async () => {
    const dir = recording({ '2026-12-01T20:09:00Z/list.json': JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [{ apiVersion: 'apps/v1', kind: 'Deployment', metadata: { namespace: 'hc', name: 'web' } }] }) });
    const err = await run(process.execPath, [join(root, 'bin/conntrail.js'), 'replay', NO_IPSETS, '--kube', dir]).catch((e: { code: number; stdout: string; stderr: string }) => e);
    expect(err).toMatchObject({ code: 2, stdout: '' });
    expect((err as { stderr: string }).stderr).toBe(
      `conntrail: replay: ${join(dir, '2026-12-01T20:09:00Z/list.json')}:1 items[0]: kind Deployment: conntrail reads Services and EndpointSlices (Pods are accepted and not used); record them with \`kubectl get services,endpointslices -A -o json\`\n`,
    );
  });

  it('refuses --kube with a bundle, which carries its own API record', async () => {
    const bundle = recording({ 'manifest.json': '{}' });
    const { log } = captureLog();
    await expect(replay(bundle, log, undefined, { kube: API_LB_LOCAL })).rejects.toMatchObject({ code: 'BAD_INPUT' });
  });
});
