// The catalog answers "as of T": what a bundle records (state at its start,
// then changes) rebuilds the same answers, and pruning the history window
// keeps what was present at its edge.
import { describe, expect, it } from 'vitest';
import { KubeCatalog, type KubeEvent } from '../../../collector/kube/catalog.ts';
import { decodeEndpointSlice, decodeService } from '../../../collector/kube/objects.ts';

const service = decodeService({ metadata: { namespace: 'kube-system', name: 'kube-dns' }, spec: { clusterIP: '10.96.0.10', ports: [{ name: 'dns', protocol: 'UDP', port: 53 }] } });
const slice = (pods: { name: string; ip: string; terminating?: boolean }[]) => {
  const d = decodeEndpointSlice({
    metadata: { namespace: 'kube-system', name: 'kube-dns-abcde', labels: { 'kubernetes.io/service-name': 'kube-dns' } },
    addressType: 'IPv4',
    ports: [{ name: 'dns', protocol: 'UDP', port: 53 }],
    endpoints: pods.map((p) => ({ addresses: [p.ip], conditions: { ready: !p.terminating, serving: true, terminating: p.terminating ?? false }, nodeName: 'node-2', targetRef: { kind: 'Pod', namespace: 'kube-system', name: p.name } })),
  });
  if (!d.ok) throw new Error(d.error);
  return d.value;
};

function rollout(): KubeEvent[] {
  if (!service.ok) throw new Error(service.error);
  return [
    { time: 1_000, kind: 'service', service: service.value },
    { time: 1_000, kind: 'slice', slice: slice([{ name: 'coredns-a', ip: '10.244.2.10' }]) },
    { time: 5_000, kind: 'slice', slice: slice([{ name: 'coredns-a', ip: '10.244.2.10', terminating: true }, { name: 'coredns-b', ip: '10.244.2.11' }]) },
    { time: 9_000, kind: 'slice', slice: slice([{ name: 'coredns-b', ip: '10.244.2.11' }]) },
  ];
}

describe('KubeCatalog', () => {
  it('answers each moment of a rollout with that moment’s state', () => {
    const c = new KubeCatalog();
    for (const e of rollout()) c.apply(e);
    expect(c.endpointAt('kube-system/kube-dns', '10.244.2.10', 53, 4_999)?.state).toBe('ready');
    expect(c.endpointAt('kube-system/kube-dns', '10.244.2.10', 53, 5_000)).toMatchObject({ state: 'terminating', since: 5_000 });
    expect(c.endpointAt('kube-system/kube-dns', '10.244.2.10', 53, 9_500)).toMatchObject({ state: 'removed', since: 9_000, span: { pod: 'kube-system/coredns-a' } });
    expect(c.endpointAt('kube-system/kube-dns', '10.244.2.11', 53, 4_000)).toBeNull();
    expect(c.serviceForAddress('10.96.0.10', 53, 'udp', 2_000)?.name).toBe('kube-dns');
    expect(c.serviceForAddress('10.96.0.10', 53, 'tcp', 2_000)).toBeNull();
  });

  it('rebuilds the same answers from the state at a window start plus the changes after it (what a bundle stores)', () => {
    const live = new KubeCatalog();
    for (const e of rollout()) live.apply(e);
    const recorded = [...live.stateAt(4_000), ...live.events(4_000, 10_000).filter((e) => e.time > 4_000)];
    const replayed = new KubeCatalog();
    for (const e of recorded) replayed.apply(e);
    for (const t of [5_000, 7_000, 9_000, 9_500])
      for (const ip of ['10.244.2.10', '10.244.2.11'])
        expect(replayed.endpointAt('kube-system/kube-dns', ip, 53, t)?.state, `${ip} at ${t}`).toBe(live.endpointAt('kube-system/kube-dns', ip, 53, t)?.state);
  });

  it('prunes what ended before the window and keeps what was present at its edge', () => {
    const c = new KubeCatalog();
    for (const e of rollout()) c.apply(e);
    c.prune(9_500);
    expect(c.endpointAt('kube-system/kube-dns', '10.244.2.10', 53, 9_600)).toBeNull();
    expect(c.endpointAt('kube-system/kube-dns', '10.244.2.11', 53, 9_600)?.state).toBe('ready');
    expect(c.serviceAt('kube-system/kube-dns', 9_600)?.clusterIPs).toEqual(['10.96.0.10']);
    expect(c.events().map((e) => e.kind)).toEqual(['service', 'slice']);
  });
});
