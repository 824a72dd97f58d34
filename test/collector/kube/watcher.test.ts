// The collector's Kubernetes client (@kubernetes/client-node informers)
// against an in-process API server speaking the real list/watch protocol:
// a rollout's EndpointSlice churn becomes the endpoint timeline a finding
// reads its pod name from, across bookmarks, dropped watches, 410 Gone and
// RBAC refusals.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeCatalog } from '../../../collector/kube/catalog.ts';
import { findKubeConfig, startKubeWatch, type KubeWatch } from '../../../collector/kube/watcher.ts';
import { startClusterView } from '../../../collector/kube/cluster-view.ts';
import { withKubernetes } from '../../../collector/kube/enrich.ts';
import type { Finding } from '../../../collector/detection/findings.ts';
import { captureLog, waitFor } from '../../helpers/capture-log.ts';
import { KubeApiServer } from '../../helpers/kube-api-server.ts';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** The Service and slice a Deployment `web` in `shop` has, in the shape kube-apiserver returns them. */
function webService(): Record<string, unknown> {
  return {
    metadata: {
      namespace: 'shop',
      name: 'web',
      annotations: {
        'service.beta.kubernetes.io/aws-load-balancer-type': 'external',
        'service.beta.kubernetes.io/aws-load-balancer-nlb-target-type': 'instance',
        'kubectl.kubernetes.io/last-applied-configuration': '{"big":"json"}',
      },
    },
    spec: {
      type: 'LoadBalancer',
      clusterIP: '10.96.12.7',
      clusterIPs: ['10.96.12.7'],
      ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 8080, nodePort: 31080 }],
      externalTrafficPolicy: 'Local',
      healthCheckNodePort: 32001,
      internalTrafficPolicy: 'Cluster',
    },
    status: { loadBalancer: { ingress: [{ ip: '203.0.113.10', ipMode: 'VIP' }] } },
  };
}

interface Pod {
  readonly name: string;
  readonly ip: string;
  readonly node: string;
  readonly ready: boolean;
  readonly terminating?: boolean;
}

function webSlice(pods: readonly Pod[]): Record<string, unknown> {
  return {
    metadata: { namespace: 'shop', name: 'web-x7k2p', labels: { 'kubernetes.io/service-name': 'web', 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' } },
    addressType: 'IPv4',
    ports: [{ name: 'http', protocol: 'TCP', port: 8080 }],
    endpoints: pods.map((p) => ({
      addresses: [p.ip],
      conditions: { ready: p.ready && !p.terminating, serving: p.ready, terminating: p.terminating ?? false },
      nodeName: p.node,
      targetRef: { kind: 'Pod', namespace: 'shop', name: p.name, uid: `uid-${p.name}` },
    })),
  };
}

const OLD: Pod = { name: 'web-7d4b9c-abcde', ip: '10.244.1.17', node: 'node-a', ready: true };
const NEW: Pod = { name: 'web-5f8c6d-fghij', ip: '10.244.2.31', node: 'node-b', ready: false };

async function rig(opts: { forbidden?: ('services' | 'endpointslices')[] } = {}) {
  const server = new KubeApiServer();
  for (const r of opts.forbidden ?? []) server.forbidden.add(r);
  await server.listen();
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-kube-test-'));
  cleanups.push(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const catalog = new KubeCatalog();
  const log = captureLog();
  const start = async (): Promise<KubeWatch> => {
    const watch = await startKubeWatch({ catalog, log: log.log, kubeconfig: server.writeKubeconfig(dir), maxBackoffMs: 1_000 });
    if (watch === null) throw new Error('no watch');
    cleanups.push(() => watch.stop());
    return watch;
  };
  return { server, catalog, log, start };
}

const lists = (server: KubeApiServer, path: string) => server.requests.filter((r) => r.path === path && r.query.watch === undefined).length;
const SLICES = '/apis/discovery.k8s.io/v1/endpointslices';

describe('Kubernetes API watch', { timeout: 30_000 }, () => {
  it('turns a rollout into an endpoint timeline: new pod not ready, then ready; old pod terminating, then gone', async () => {
    const { server, catalog, start } = await rig();
    server.apply('services', webService());
    server.apply('endpointslices', webSlice([OLD]));
    const watch = await start();
    await watch.synced;
    expect(catalog.serviceAt('shop/web', Date.now())).toMatchObject({ type: 'LoadBalancer', externalTrafficPolicy: 'Local', healthCheckNodePort: 32001, loadBalancerIngress: [{ ip: '203.0.113.10', ipMode: 'VIP', hostname: null }] });
    // Only the LB annotations are kept, not kubectl's last-applied blob.
    expect(Object.keys(catalog.serviceAt('shop/web', Date.now())?.annotations ?? {})).toEqual(['service.beta.kubernetes.io/aws-load-balancer-type', 'service.beta.kubernetes.io/aws-load-balancer-nlb-target-type']);

    const step = async (pods: Pod[], expectState: () => boolean) => {
      server.apply('endpointslices', webSlice(pods));
      await waitFor('the watch to deliver the change', expectState, 5_000);
      // Times are milliseconds: keep each step's moment apart from the next change.
      await new Promise((r) => setTimeout(r, 5));
      const at = Date.now();
      await new Promise((r) => setTimeout(r, 5));
      return at;
    };
    const surged = await step([OLD, NEW], () => catalog.endpointAt('shop/web', NEW.ip, 8080, Date.now())?.state === 'not-ready');
    const newReady = await step([OLD, { ...NEW, ready: true }], () => catalog.endpointAt('shop/web', NEW.ip, 8080, Date.now())?.state === 'ready');
    const draining = await step([{ ...OLD, terminating: true }, { ...NEW, ready: true }], () => catalog.endpointAt('shop/web', OLD.ip, 8080, Date.now())?.state === 'terminating');
    const gone = await step([{ ...NEW, ready: true }], () => catalog.endpointAt('shop/web', OLD.ip, 8080, Date.now())?.state === 'removed');

    // The same questions asked "as of" each moment answer with that moment's state.
    expect(catalog.endpointAt('shop/web', OLD.ip, 8080, surged)?.state).toBe('ready');
    expect(catalog.endpointAt('shop/web', NEW.ip, 8080, surged)?.state).toBe('not-ready');
    expect(catalog.endpointAt('shop/web', NEW.ip, 8080, newReady)?.state).toBe('ready');
    expect(catalog.endpointAt('shop/web', OLD.ip, 8080, draining)).toMatchObject({ state: 'terminating', span: { pod: `shop/${OLD.name}`, nodeName: 'node-a' } });
    const removed = catalog.endpointAt('shop/web', OLD.ip, 8080, gone);
    expect(removed).toMatchObject({ state: 'removed', span: { pod: `shop/${OLD.name}` } });
    expect(removed?.since).toBeGreaterThanOrEqual(draining);

    // A finding about a connection sent to the old pod's address after it left names that pod.
    const finding: Finding = {
      finding: 'port-reuse-to-removed-endpoint',
      severity: 'error',
      node: 'node-b',
      service: 'TCP 10.96.12.7:80',
      tuple: { proto: 'tcp', src: '10.244.2.8', sport: 40120, dst: '10.96.12.7', dport: 80 },
      endpoint: `${OLD.ip}:8080`,
      summary: 'a reused tuple went to a removed endpoint',
      evidence: [],
      advice: '-',
      time: gone + 1,
    };
    const named = withKubernetes(finding, catalog);
    expect(named.pod).toBe(`shop/${OLD.name}`);
    expect(named.details).toMatchObject({ endpointCondition: 'removed', podNode: 'node-a' });
    expect(named.summary).toContain(`The endpoint is pod shop/${OLD.name} on node node-a; the API had it removed from the Service since`);
    expect(named.evidence.at(-1)).toMatchObject({ source: 'kubernetes' });
    expect(named.evidence.at(-1)?.raw).toContain(`"name":"${OLD.name}"`);
  });

  it('resumes from a BOOKMARK after the watch drops, without listing again', async () => {
    const { server, catalog, start } = await rig();
    server.apply('services', webService());
    server.apply('endpointslices', webSlice([OLD]));
    await (await start()).synced;
    await waitFor('two open watches', () => server.openWatches === 2, 5_000);
    // Other resources move the resourceVersion on; a bookmark tells the client where it stands.
    for (let i = 0; i < 5; i++) server.apply('services', { ...webService(), metadata: { namespace: 'other', name: `svc-${i}` } });
    expect(server.bookmark()).toBe(2);
    const bookmarked = String(server.resourceVersion);
    await new Promise((r) => setTimeout(r, 200));
    const listsBefore = lists(server, SLICES);
    server.dropWatches();
    await waitFor('a new slice watch from the bookmark', () => server.requests.find((r) => r.path === SLICES && r.query.watch === 'true' && r.query.resourceVersion === bookmarked), 5_000);
    expect(server.requests.filter((r) => r.query.watch === 'true').every((r) => r.query.allowWatchBookmarks === 'true')).toBe(true);
    expect(lists(server, SLICES)).toBe(listsBefore);
    server.apply('endpointslices', webSlice([OLD, NEW]));
    await waitFor('the change after resuming', () => catalog.endpointAt('shop/web', NEW.ip, 8080, Date.now()) !== null, 5_000);
  });

  it('relists after 410 Gone and sees what changed while it was not watching', async () => {
    const { server, catalog, start, log } = await rig();
    server.apply('services', webService());
    server.apply('endpointslices', webSlice([OLD]));
    server.apply('endpointslices', { ...webSlice([NEW]), metadata: { namespace: 'shop', name: 'web-q9z8y', labels: { 'kubernetes.io/service-name': 'web' } } });
    await (await start()).synced;
    await waitFor('two open watches', () => server.openWatches === 2, 5_000);
    const listsBefore = lists(server, SLICES);
    // The watch is down while the slice holding the old pod is deleted and history is compacted away.
    server.dropWatches();
    server.delete('endpointslices', 'shop', 'web-x7k2p');
    server.compact();
    await waitFor('a relist after 410', () => lists(server, SLICES) > listsBefore, 10_000);
    await waitFor('the deletion seen through the relist', () => catalog.endpointAt('shop/web', OLD.ip, 8080, Date.now())?.state === 'removed', 5_000);
    expect(catalog.endpointAt('shop/web', NEW.ip, 8080, Date.now())?.state).toBe('not-ready');
    // 410 is the protocol working, not a failure to report.
    expect(log.lines.filter((l) => Number(l.level) >= 40)).toEqual([]);
  });

  it('keeps running without RBAC for a resource, says so once, and recovers when it is granted', async () => {
    const { server, catalog, start, log } = await rig({ forbidden: ['endpointslices'] });
    server.apply('services', webService());
    server.apply('endpointslices', webSlice([OLD]));
    await start();
    await waitFor('services listed', () => catalog.serviceAt('shop/web', Date.now()) !== null, 5_000);
    await waitFor('two refused lists', () => server.requests.filter((r) => r.path === SLICES && r.status === 403).length >= 2, 10_000);
    const refusals = log.lines.filter((l) => String(l.msg).startsWith('Kubernetes API: cannot list/watch'));
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatchObject({ resource: 'endpointslices' });
    expect(String(refusals[0]?.reason)).toContain('403');
    server.forbidden.clear();
    await waitFor('slices listed once allowed', () => catalog.endpointAt('shop/web', OLD.ip, 8080, Date.now())?.state === 'ready', 10_000);
    expect(log.lines.some((l) => l.msg === 'Kubernetes API: listing and watching again' && l.resource === 'endpointslices')).toBe(true);
  });

  it('rejects a wrong token: the API answers 401 and nothing is learnt', async () => {
    const { server, catalog, log } = await rig();
    server.apply('services', webService());
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-kube-test-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const watch = await startKubeWatch({ catalog, log: log.log, kubeconfig: server.writeKubeconfig(dir, 'not-the-token') });
    cleanups.push(() => watch?.stop());
    await waitFor('a refusal logged', () => log.lines.find((l) => String(l.msg).startsWith('Kubernetes API: cannot list/watch') && String(l.reason).includes('401')), 5_000);
    expect(catalog.serviceAt('shop/web', Date.now())).toBeNull();
  });

  it('finds no config outside a cluster without KUBECONFIG or ~/.kube/config', () => {
    const home = mkdtempSync(join(tmpdir(), 'conntrail-home-'));
    cleanups.push(() => rmSync(home, { recursive: true, force: true }));
    expect(findKubeConfig(undefined, { HOME: home })).toBeNull();
    expect(findKubeConfig(undefined, { HOME: home, KUBECONFIG: join(home, 'missing') })).toBeNull();
    expect(findKubeConfig('/etc/explicit', { HOME: home })).toBe('/etc/explicit');
  });
});

describe('startClusterView', () => {
  it('without any API config runs on node data alone and says so in one log line', async () => {
    const home = mkdtempSync(join(tmpdir(), 'conntrail-home-'));
    cleanups.push(() => rmSync(home, { recursive: true, force: true }));
    const log = captureLog();
    const view = await startClusterView({ log: log.log, historyMs: 60_000, env: { HOME: home } });
    expect(view.catalog).toBeNull();
    expect(log.lines).toHaveLength(1);
    expect(log.lines[0]).toMatchObject({ kubernetes: 'none', msg: expect.stringContaining('running on node data alone') });
    await view.stop();
  });

  it('with a config, keeps a catalog the detectors can read', async () => {
    const { server } = await rig();
    server.apply('services', webService());
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-kube-test-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const log = captureLog();
    const view = await startClusterView({ log: log.log, historyMs: 60_000, kubeconfig: server.writeKubeconfig(dir) });
    cleanups.push(() => view.stop());
    await waitFor('the Service listed', () => view.catalog?.serviceAt('shop/web', Date.now()), 5_000);
  });
});
