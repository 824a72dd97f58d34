// Names what a finding found by address: the pod behind its endpoint (and
// behind its client), that endpoint's conditions in the EndpointSlice at the
// time, and the slice line itself as evidence. Node data decides whether
// there is a finding; the API only says who it is about.
import { iso, type Evidence, type Finding } from '../detection/findings.ts';
import type { KubeView, PodEndpointAt } from './catalog.ts';

/** `ns/name:port` (iptables, nft) → `ns/name`; an IPVS id (`TCP 10.0.0.1:80`) → the Service at that address. */
export function kubeServiceOf(f: Pick<Finding, 'service' | 'time'>, kube: KubeView): string | null {
  if (f.service === null) return null;
  const named = /^([^/\s]+\/[^:\s]+)/.exec(f.service);
  if (named?.[1] !== undefined) return named[1];
  const ipvs = /^(TCP|UDP|SCTP)\s+\[?([^\]\s]+?)\]?:(\d+)$/i.exec(f.service);
  if (ipvs?.[1] && ipvs[2] && ipvs[3]) {
    const svc = kube.serviceForAddress(ipvs[2], Number(ipvs[3]), ipvs[1], f.time);
    return svc === null ? null : `${svc.namespace}/${svc.name}`;
  }
  return null;
}

const splitEndpoint = (text: string): { address: string; port: number | null } | null => {
  const m = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(text);
  return m?.[1] === undefined ? null : { address: m[1], port: m[2] === undefined ? null : Number(m[2]) };
};

const STATE_WORDS: Record<PodEndpointAt['state'], string> = {
  ready: 'ready',
  'not-ready': 'not ready',
  terminating: 'terminating',
  removed: 'removed from the Service',
};

export function withKubernetes(f: Finding, kube: KubeView): Finding {
  const service = kubeServiceOf(f, kube);
  const ep = f.endpoint === null ? null : splitEndpoint(f.endpoint);
  const at = ep === null ? null : ((service === null ? null : kube.endpointAt(service, ep.address, ep.port, f.time)) ?? kube.podAt(ep.address, f.time));
  const client = f.tuple === null ? null : kube.podAt(f.tuple.src, f.time);
  if (at === null && client === null) return f;
  const evidence: Evidence[] = [...f.evidence];
  let summary = f.summary;
  const details: Record<string, string | number | boolean | null> = { ...f.details };
  if (at !== null) {
    const where = at.span.nodeName === null ? '' : ` on node ${at.span.nodeName}`;
    summary += `. The endpoint is pod ${at.span.pod ?? '(no pod)'}${where}; the API had it ${STATE_WORDS[at.state]} since ${iso(at.since)}`;
    evidence.push({ source: 'kubernetes', node: f.node, time: iso(at.since), raw: `endpointslice ${at.span.service.split('/')[0]}/${at.span.slice}: ${at.span.raw}` });
    details.endpointCondition = at.state;
    details.endpointConditionSince = iso(at.since);
    details.podNode = at.span.nodeName;
  }
  if (client !== null && client.span.pod !== null) summary += `${at === null ? '.' : ';'} the client is pod ${client.span.pod}`;
  return { ...f, summary, evidence, details, pod: at?.span.pod ?? null, clientPod: client?.span.pod ?? null };
}
