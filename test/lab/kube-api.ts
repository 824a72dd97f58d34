// The lab's Kubernetes API: the Services and EndpointSlices a real cluster
// would show for the lab's proxy model, published to the in-process API
// server before kube-proxy's rules change (the order a real rollout has:
// the EndpointSlice controller writes, then every kube-proxy reacts).
import type { KubeApiServer } from '../helpers/kube-api-server.ts';
import type { ProxyModel, ServiceModel } from './kube-proxy.ts';

type Obj = Record<string, unknown>;

export function serviceObject(models: readonly ServiceModel[]): Obj {
  const m = models[0];
  if (m === undefined) throw new Error('a Service needs at least one port');
  const lb = models.some((x) => x.loadBalancerIP !== undefined || x.loadBalancerHostname !== undefined);
  const type = lb ? 'LoadBalancer' : models.some((x) => x.nodePort !== undefined) ? 'NodePort' : 'ClusterIP';
  const ingress = lb ? [{ ...(m.loadBalancerIP ? { ip: m.loadBalancerIP, ipMode: m.ipMode ?? 'VIP' } : {}), ...(m.loadBalancerHostname ? { hostname: m.loadBalancerHostname } : {}) }] : [];
  return {
    metadata: { namespace: m.namespace, name: m.name, ...(m.annotations ? { annotations: { ...m.annotations } } : {}) },
    spec: {
      type,
      clusterIP: m.clusterIP,
      clusterIPs: [m.clusterIP],
      ipFamilies: ['IPv4'],
      ports: models.map((x) => ({ ...(x.portName ? { name: x.portName } : {}), protocol: x.protocol.toUpperCase(), port: x.port, targetPort: x.endpoints[0]?.port ?? x.port, ...(x.nodePort ? { nodePort: x.nodePort } : {}) })),
      ...(type === 'ClusterIP' ? {} : { externalTrafficPolicy: m.externalTrafficPolicy }),
      ...(m.healthCheckNodePort ? { healthCheckNodePort: m.healthCheckNodePort } : {}),
      internalTrafficPolicy: 'Cluster',
    },
    status: { loadBalancer: lb ? { ingress } : {} },
  };
}

/** One slice per Service port, as the EndpointSlice controller groups endpoints by their port set. */
export function endpointSliceObject(m: ServiceModel, podByIp: ReadonlyMap<string, string>): Obj {
  return {
    metadata: { namespace: m.namespace, name: `${m.name}-${m.portName || 'port'}-lab`, labels: { 'kubernetes.io/service-name': m.name, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' } },
    addressType: 'IPv4',
    ports: [{ ...(m.portName ? { name: m.portName } : { name: '' }), protocol: m.protocol.toUpperCase(), port: m.endpoints[0]?.port ?? m.port }],
    endpoints: m.endpoints.map((e) => {
      const pod = podByIp.get(e.ip);
      const terminating = e.terminating === true;
      return {
        addresses: [e.ip],
        conditions: { ready: e.ready && !terminating, serving: e.ready || terminating, terminating },
        nodeName: e.nodeName,
        ...(pod ? { targetRef: { kind: 'Pod', namespace: m.namespace, name: pod } } : {}),
      };
    }),
  };
}

/** Publishes a proxy model, changing only what changed and deleting what is gone. */
export class LabKubeApi {
  readonly server: KubeApiServer;
  readonly #published = new Map<string, string>();

  constructor(server: KubeApiServer) {
    this.server = server;
  }

  publish(model: ProxyModel, podByIp: ReadonlyMap<string, string>): void {
    const want = new Map<string, { resource: 'services' | 'endpointslices'; object: Obj }>();
    const byService = new Map<string, ServiceModel[]>();
    for (const m of model.services) byService.set(`${m.namespace}/${m.name}`, [...(byService.get(`${m.namespace}/${m.name}`) ?? []), m]);
    for (const [key, models] of byService) {
      want.set(`services ${key}`, { resource: 'services', object: serviceObject(models) });
      for (const m of models) {
        const slice = endpointSliceObject(m, podByIp);
        want.set(`endpointslices ${m.namespace}/${(slice.metadata as { name: string }).name}`, { resource: 'endpointslices', object: slice });
      }
    }
    for (const [key, { resource, object }] of want) {
      const text = JSON.stringify(object);
      if (this.#published.get(key) === text) continue;
      this.server.apply(resource, object);
      this.#published.set(key, text);
    }
    for (const key of [...this.#published.keys()]) {
      if (want.has(key)) continue;
      const [resource, nsName] = key.split(' ') as ['services' | 'endpointslices', string];
      const [namespace, name] = nsName.split('/') as [string, string];
      this.server.delete(resource, namespace, name);
      this.#published.delete(key);
    }
  }
}
