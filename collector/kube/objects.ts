// What conntrail takes from the Kubernetes API, decoded from `unknown` at the
// boundary: list items come through @kubernetes/client-node's serializer and
// watch events as plain JSON, and both name these fields the same way. An
// object that lacks what identifies it is an error, never a crash; optional
// fields that are missing come back null.

export interface KubeServicePort {
  readonly name: string;
  readonly protocol: string;
  readonly port: number;
  readonly nodePort: number | null;
  readonly targetPort: string | number | null;
}

export interface KubeLoadBalancerIngress {
  readonly ip: string | null;
  readonly hostname: string | null;
  /** `VIP` (the default) or `Proxy` (KEP-1860: kube-proxy does not bind the IP on nodes). */
  readonly ipMode: string | null;
}

export interface KubeService {
  readonly namespace: string;
  readonly name: string;
  readonly resourceVersion: string;
  readonly type: string;
  readonly clusterIPs: readonly string[];
  readonly externalIPs: readonly string[];
  readonly ports: readonly KubeServicePort[];
  readonly externalTrafficPolicy: string | null;
  readonly internalTrafficPolicy: string | null;
  readonly healthCheckNodePort: number | null;
  readonly loadBalancerIngress: readonly KubeLoadBalancerIngress[];
  /** Only the load balancer annotations the detectors read (service.beta.kubernetes.io/aws-load-balancer-*). */
  readonly annotations: Readonly<Record<string, string>>;
}

export interface KubeEndpoint {
  readonly addresses: readonly string[];
  /** EndpointConditions: null when the API left them unset (ready/serving then mean true). */
  readonly ready: boolean | null;
  readonly serving: boolean | null;
  readonly terminating: boolean | null;
  /** `namespace/name` of the Pod in targetRef. */
  readonly pod: string | null;
  readonly nodeName: string | null;
  /** The endpoint as the API returned it, as JSON with sorted keys (lists and watch events order fields differently): the evidence line. */
  readonly raw: string;
}

export interface KubeEndpointSlice {
  readonly namespace: string;
  readonly name: string;
  readonly resourceVersion: string;
  /** From the `kubernetes.io/service-name` label; null for slices no Service owns. */
  readonly service: string | null;
  readonly addressType: string;
  readonly ports: readonly { readonly name: string; readonly protocol: string; readonly port: number | null }[];
  readonly endpoints: readonly KubeEndpoint[];
}

export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

const LB_ANNOTATION = /^service\.beta\.kubernetes\.io\/aws-load-balancer-/;

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const obj = (v: unknown): Json => (isObject(v) ? v : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const int = (v: unknown): number | null => (typeof v === 'number' && Number.isInteger(v) ? v : null);
const bool = (v: unknown): boolean | null => (typeof v === 'boolean' ? v : null);
const strings = (v: unknown): string[] => arr(v).filter((x): x is string => typeof x === 'string');

function identity(o: unknown, kind: string): Decoded<{ namespace: string; name: string; resourceVersion: string; meta: Json }> {
  if (!isObject(o)) return { ok: false, error: `${kind}: not an object` };
  const meta = obj(o.metadata);
  const namespace = str(meta.namespace);
  const name = str(meta.name);
  if (namespace === null || name === null) return { ok: false, error: `${kind}: metadata.namespace and metadata.name are required` };
  return { ok: true, value: { namespace, name, resourceVersion: str(meta.resourceVersion) ?? '', meta } };
}

export function decodeService(o: unknown): Decoded<KubeService> {
  const id = identity(o, 'Service');
  if (!id.ok) return id;
  const spec = obj((o as Json).spec);
  const status = obj((o as Json).status);
  const clusterIP = str(spec.clusterIP);
  const clusterIPs = strings(spec.clusterIPs);
  const annotations: Record<string, string> = {};
  for (const [k, v] of Object.entries(obj(id.value.meta.annotations))) if (LB_ANNOTATION.test(k) && typeof v === 'string') annotations[k] = v;
  return {
    ok: true,
    value: {
      namespace: id.value.namespace,
      name: id.value.name,
      resourceVersion: id.value.resourceVersion,
      type: str(spec.type) ?? 'ClusterIP',
      clusterIPs: (clusterIPs.length > 0 ? clusterIPs : clusterIP === null ? [] : [clusterIP]).filter((ip) => ip !== 'None' && ip !== ''),
      externalIPs: strings(spec.externalIPs),
      ports: arr(spec.ports).map((p) => {
        const port = obj(p);
        const target = port.targetPort;
        return {
          name: str(port.name) ?? '',
          protocol: str(port.protocol) ?? 'TCP',
          port: int(port.port) ?? 0,
          nodePort: int(port.nodePort),
          targetPort: typeof target === 'string' || typeof target === 'number' ? target : null,
        };
      }),
      externalTrafficPolicy: str(spec.externalTrafficPolicy),
      internalTrafficPolicy: str(spec.internalTrafficPolicy),
      healthCheckNodePort: int(spec.healthCheckNodePort),
      loadBalancerIngress: arr(obj(status.loadBalancer).ingress).map((i) => ({ ip: str(obj(i).ip), hostname: str(obj(i).hostname), ipMode: str(obj(i).ipMode) })),
      annotations,
    },
  };
}

export function decodeEndpointSlice(o: unknown): Decoded<KubeEndpointSlice> {
  const id = identity(o, 'EndpointSlice');
  if (!id.ok) return id;
  const s = o as Json;
  const addressType = str(s.addressType);
  if (addressType === null) return { ok: false, error: `EndpointSlice ${id.value.namespace}/${id.value.name}: addressType is required` };
  return {
    ok: true,
    value: {
      namespace: id.value.namespace,
      name: id.value.name,
      resourceVersion: id.value.resourceVersion,
      service: str(obj(id.value.meta.labels)['kubernetes.io/service-name']),
      addressType,
      ports: arr(s.ports).map((p) => ({ name: str(obj(p).name) ?? '', protocol: str(obj(p).protocol) ?? 'TCP', port: int(obj(p).port) })),
      endpoints: arr(s.endpoints).map((e) => {
        const ep = obj(e);
        const conditions = obj(ep.conditions);
        const ref = obj(ep.targetRef);
        const pod = str(ref.kind) === 'Pod' && str(ref.name) !== null ? `${str(ref.namespace) ?? id.value.namespace}/${str(ref.name)}` : null;
        return {
          addresses: strings(ep.addresses),
          ready: bool(conditions.ready),
          serving: bool(conditions.serving),
          terminating: bool(conditions.terminating),
          pod,
          nodeName: str(ep.nodeName),
          raw: canonicalJson(e),
        };
      }),
    },
  };
}

/** JSON with object keys sorted, undefined fields dropped: the same text whichever way the object came. */
export function canonicalJson(v: unknown): string {
  const sort = (x: unknown): unknown => {
    if (Array.isArray(x)) return x.map(sort);
    if (x instanceof Date) return x.toISOString();
    if (!isObject(x)) return x;
    return Object.fromEntries(
      Object.keys(x)
        .filter((k) => x[k] !== undefined)
        .sort()
        .map((k) => [k, sort(x[k])]),
    );
  };
  return JSON.stringify(sort(v));
}

export interface ClientIpPreservation {
  /** true: the LB keeps the client's address (the hairpin case); false: it does not; null: cannot tell from the Service. */
  readonly preserved: boolean | null;
  readonly targetType: 'instance' | 'ip' | null;
  /** Which annotations (or defaults) decided it, for the finding. */
  readonly because: string;
}

const TYPE = 'service.beta.kubernetes.io/aws-load-balancer-type';
const TARGET_TYPE = 'service.beta.kubernetes.io/aws-load-balancer-nlb-target-type';
const TG_ATTRIBUTES = 'service.beta.kubernetes.io/aws-load-balancer-target-group-attributes';

/**
 * Whether an AWS NLB in front of this Service keeps client IPs. AWS's
 * defaults: instance target groups preserve them; IP target groups with TCP
 * or TLS do not, with UDP they do; `preserve_client_ip.enabled` overrides
 * for TCP/TLS (ELB docs, "Edit target group attributes", Client IP preservation).
 */
export function clientIpPreservation(svc: KubeService, protocol: string): ClientIpPreservation {
  const type = svc.annotations[TYPE] ?? null;
  const explicitTarget = svc.annotations[TARGET_TYPE] ?? null;
  const attributes = svc.annotations[TG_ATTRIBUTES] ?? null;
  if (type === null && explicitTarget === null && attributes === null) return { preserved: null, targetType: null, because: 'the Service has no AWS load balancer annotations' };
  const targetType: 'instance' | 'ip' | null =
    explicitTarget === 'ip' || type === 'nlb-ip' ? 'ip' : explicitTarget === 'instance' || type === 'nlb' || type === 'external' ? 'instance' : null;
  const setting = attributes === null ? null : /(?:^|,)\s*preserve_client_ip\.enabled\s*=\s*(true|false)\s*(?:,|$)/.exec(attributes);
  const udp = protocol.toUpperCase() === 'UDP';
  const decided = [type === null ? null : `${TYPE}: ${type}`, explicitTarget === null ? null : `${TARGET_TYPE}: ${explicitTarget}`, attributes === null ? null : `${TG_ATTRIBUTES}: ${attributes}`]
    .filter((x) => x !== null)
    .join('; ');
  if (setting?.[1] !== undefined && !udp) return { preserved: setting[1] === 'true', targetType, because: decided };
  if (targetType === 'instance') return { preserved: true, targetType, because: `${decided} (instance targets keep client IPs by default)` };
  if (targetType === 'ip') return { preserved: udp, targetType, because: `${decided} (IP targets keep client IPs by default only for UDP)` };
  return { preserved: null, targetType, because: decided };
}
