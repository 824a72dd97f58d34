// Decoding what the API returns, and reading an AWS load balancer's client IP
// preservation from a Service's annotations the way AWS documents its defaults.
import { describe, expect, it } from 'vitest';
import { clientIpPreservation, decodeEndpointSlice, decodeService, type KubeService } from '../../../collector/kube/objects.ts';

describe('decodeService', () => {
  it('reads spec and status fields the detectors use, and keeps only load balancer annotations', () => {
    const d = decodeService({
      metadata: { namespace: 'hc', name: 'web', resourceVersion: '881', annotations: { 'service.beta.kubernetes.io/aws-load-balancer-type': 'nlb', 'meta.helm.sh/release-name': 'web' } },
      spec: { type: 'LoadBalancer', clusterIP: '10.96.0.20', ports: [{ name: 'http', protocol: 'TCP', port: 80, targetPort: 'http', nodePort: 31199 }], externalTrafficPolicy: 'Local', healthCheckNodePort: 30999 },
      status: { loadBalancer: { ingress: [{ hostname: 'a1b2.elb.us-east-1.amazonaws.com' }] } },
    });
    expect(d).toEqual({
      ok: true,
      value: {
        namespace: 'hc',
        name: 'web',
        resourceVersion: '881',
        type: 'LoadBalancer',
        clusterIPs: ['10.96.0.20'],
        externalIPs: [],
        ports: [{ name: 'http', protocol: 'TCP', port: 80, nodePort: 31199, targetPort: 'http' }],
        externalTrafficPolicy: 'Local',
        internalTrafficPolicy: null,
        healthCheckNodePort: 30999,
        loadBalancerIngress: [{ ip: null, hostname: 'a1b2.elb.us-east-1.amazonaws.com', ipMode: null }],
        annotations: { 'service.beta.kubernetes.io/aws-load-balancer-type': 'nlb' },
      },
    });
  });

  it('treats a headless Service as having no cluster IP', () => {
    const d = decodeService({ metadata: { namespace: 'db', name: 'pg' }, spec: { clusterIP: 'None', clusterIPs: ['None'] } });
    expect(d.ok && d.value.clusterIPs).toEqual([]);
  });

  it.each([
    [null, 'Service: not an object'],
    [{ metadata: { name: 'x' } }, 'Service: metadata.namespace and metadata.name are required'],
    [[], 'Service: not an object'],
  ])('rejects %j with a specific reason', (input, reason) => {
    expect(decodeService(input)).toEqual({ ok: false, error: reason });
  });
});

describe('decodeEndpointSlice', () => {
  it('reads conditions, pod and node per endpoint, and the owning Service from its label', () => {
    const d = decodeEndpointSlice({
      metadata: { namespace: 'kube-system', name: 'kube-dns-4mp2x', labels: { 'kubernetes.io/service-name': 'kube-dns' } },
      addressType: 'IPv4',
      ports: [{ name: 'dns', protocol: 'UDP', port: 53 }],
      endpoints: [
        { addresses: ['10.244.0.5'], conditions: { ready: false, serving: true, terminating: true }, nodeName: 'node-2', targetRef: { kind: 'Pod', namespace: 'kube-system', name: 'coredns-a' } },
        { addresses: ['10.244.0.6'], conditions: {}, targetRef: { kind: 'Node', name: 'node-9' } },
      ],
    });
    expect(d.ok).toBe(true);
    if (!d.ok) return;
    expect(d.value.service).toBe('kube-dns');
    expect(d.value.endpoints[0]).toMatchObject({ addresses: ['10.244.0.5'], ready: false, serving: true, terminating: true, pod: 'kube-system/coredns-a', nodeName: 'node-2' });
    // Unset conditions stay unset (the API's "unknown"); a targetRef that is not a Pod names no pod.
    expect(d.value.endpoints[1]).toMatchObject({ ready: null, serving: null, terminating: null, pod: null, nodeName: null });
    expect(d.value.endpoints[0]?.raw).toBe('{"addresses":["10.244.0.5"],"conditions":{"ready":false,"serving":true,"terminating":true},"nodeName":"node-2","targetRef":{"kind":"Pod","name":"coredns-a","namespace":"kube-system"}}');
  });

  it('rejects a slice without addressType', () => {
    expect(decodeEndpointSlice({ metadata: { namespace: 'a', name: 'b' } })).toEqual({ ok: false, error: 'EndpointSlice a/b: addressType is required' });
  });
});

describe('clientIpPreservation', () => {
  const svc = (annotations: Record<string, string>): KubeService => {
    const d = decodeService({ metadata: { namespace: 'n', name: 's', annotations }, spec: {} });
    if (!d.ok) throw new Error(d.error);
    return d.value;
  };
  const TYPE = 'service.beta.kubernetes.io/aws-load-balancer-type';
  const TARGET = 'service.beta.kubernetes.io/aws-load-balancer-nlb-target-type';
  const ATTRS = 'service.beta.kubernetes.io/aws-load-balancer-target-group-attributes';
  it.each([
    ['no AWS annotation: cannot tell', {}, 'TCP', null, null],
    ['in-tree NLB: instance targets keep client IPs', { [TYPE]: 'nlb' }, 'TCP', true, 'instance'],
    ['LB controller, instance targets (seed 001)', { [TYPE]: 'external', [TARGET]: 'instance' }, 'TCP', true, 'instance'],
    ['LB controller, IP targets over TCP: off by default', { [TYPE]: 'external', [TARGET]: 'ip' }, 'TCP', false, 'ip'],
    ['IP targets over UDP: always on', { [TYPE]: 'external', [TARGET]: 'ip' }, 'UDP', true, 'ip'],
    ['instance targets with preservation turned off', { [TYPE]: 'external', [TARGET]: 'instance', [ATTRS]: 'deregistration_delay.timeout_seconds=30,preserve_client_ip.enabled=false' }, 'TCP', false, 'instance'],
    ['IP targets with preservation turned on', { [TYPE]: 'external', [TARGET]: 'ip', [ATTRS]: 'preserve_client_ip.enabled=true' }, 'TCP', true, 'ip'],
    ['UDP cannot turn it off', { [TYPE]: 'external', [TARGET]: 'instance', [ATTRS]: 'preserve_client_ip.enabled=false' }, 'UDP', true, 'instance'],
  ])('%s', (_name, annotations, protocol, preserved, targetType) => {
    expect(clientIpPreservation(svc(annotations), protocol)).toMatchObject({ preserved, targetType });
  });
});
