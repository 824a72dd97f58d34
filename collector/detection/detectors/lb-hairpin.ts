// Seeds 000/001: a pod connects to a load balancer that preserves client IPs
// and targets instances; the LB picks the pod's own node, so the SYN comes
// back in through that node's NodePort from the pod's own address. The node
// DNATs it to an endpoint and sends the SYN-ACK straight to the pod from
// node:NodePort, which the pod never asked; it resets, and its SYN to the LB
// is never answered. On the node: one entry pod -> LB that never replied, and
// one from the same pod and source port to the node's own NodePort, NATed.
import type { Address } from '../../../contract/records.ts';
import { endpointKey } from '../endpoint-history.ts';
import { iso, type Finding } from '../findings.ts';
import { clientIpPreservation, type ClientIpPreservation } from '../../kube/objects.ts';
import type { Detector, DetectorInput } from './input.ts';

const GENERIC_ADVICE =
  'A load balancer that keeps client IPs cannot hairpin a target\'s own connection back to it (AWS NLB docs, "Connections time out for requests from a target to its load balancer"). ' +
  'Use IP targets (`service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip`), or turn client IP preservation off (`service.beta.kubernetes.io/aws-load-balancer-target-group-attributes: preserve_client_ip.enabled=false`), ';

/** What the Service's own spec says about the load balancer, when the API is there to ask. */
function lbFromApi(input: DetectorInput, programmedId: string, lbIp: string, port: number, proto: string): { service: string; preservation: ClientIpPreservation; ingress: string } | null {
  // An LB that publishes only a hostname (the hairpin case: no IP in the status) is found by the Service kube-proxy programmed.
  const svc = input.kube?.serviceAt(programmedId.split(':')[0] ?? programmedId, input.time) ?? input.kube?.serviceForAddress(lbIp, port, proto, input.time) ?? null;
  if (svc === null) return null;
  const ingress = svc.loadBalancerIngress.find((i) => i.ip === lbIp) ?? svc.loadBalancerIngress[0];
  return {
    service: `${svc.namespace}/${svc.name}`,
    preservation: clientIpPreservation(svc, proto),
    ingress: ingress === undefined ? lbIp : [ingress.ip, ingress.hostname, ingress.ipMode === null ? null : `ipMode ${ingress.ipMode}`].filter((x) => x !== null).join(' '),
  };
}

function advice(api: ReturnType<typeof lbFromApi>, serviceName: string): string {
  const tail = `or have in-cluster clients use the Service name (${serviceName}) instead of the load balancer.`;
  if (api === null || api.preservation.preserved === null) return GENERIC_ADVICE + tail;
  if (api.preservation.preserved)
    return `Client IP preservation is on for ${api.service} (${api.preservation.because}), so the load balancer cannot hairpin a target's own connection back to it (AWS NLB docs, "Connections time out for requests from a target to its load balancer"). ${
      api.preservation.targetType === 'ip'
        ? 'Set `service.beta.kubernetes.io/aws-load-balancer-target-group-attributes: preserve_client_ip.enabled=false`, '
        : 'Switch to IP targets (`service.beta.kubernetes.io/aws-load-balancer-nlb-target-type: ip`), or set `service.beta.kubernetes.io/aws-load-balancer-target-group-attributes: preserve_client_ip.enabled=false`, '
    }${tail}`;
  return `${api.service}'s annotations say client IP preservation is off (${api.preservation.because}), yet the node received the client's own address from the load balancer: check the target group's actual attributes (the controller may not have applied the annotation, or another load balancer points at this NodePort), ${tail}`;
}

export const detectLbHairpin: Detector = (input) => {
  const services = input.endpoints.services.filter((s) => s.nodePorts.length > 0);
  if (services.length === 0) return [];
  const conntrack = input.records('conntrack');
  const local = [...input.records('addrs').values()].filter((a: Address) => a.family === 'inet' && a.scope !== 'host').map((a) => a.address);
  const findings: Finding[] = [];
  const seen = new Set<string>();
  for (const t of input.transitions) {
    if (t.source !== 'conntrack' || t.kind === 'removed') continue;
    const toLb = t.after;
    if (!toLb.unreplied || toLb.orig.sport === null || toLb.orig.dport === null || local.includes(toLb.orig.dst)) continue;
    for (const svc of services) {
      for (const port of svc.nodePorts) {
        for (const nodeIp of local) {
          const key = `${toLb.zone}|${toLb.proto}|${toLb.orig.src}|${toLb.orig.sport}|${nodeIp}|${port}|`;
          const back = conntrack.get(key);
          if (back === undefined || back.reply.src === back.orig.dst || back.reply.sport === null || seen.has(key)) continue;
          // A reflected SYN's answer goes to a socket that never asked for it and is reset: it never gets to ESTABLISHED.
          // An established one is the pod's own connection to the NodePort, from a port it also used elsewhere.
          if (back.assured || back.state === 'ESTABLISHED') continue;
          seen.add(key);
          const endpoint = endpointKey({ address: back.reply.src, port: back.reply.sport });
          const api = lbFromApi(input, svc.id, toLb.orig.dst, toLb.orig.dport, toLb.proto);
          findings.push({
            finding: 'lb-hairpin',
            severity: 'error',
            node: input.node,
            service: svc.id,
            tuple: { proto: toLb.proto, src: toLb.orig.src, sport: toLb.orig.sport, dst: toLb.orig.dst, dport: toLb.orig.dport },
            endpoint,
            summary:
              `${toLb.orig.src}:${toLb.orig.sport} connected to the load balancer ${toLb.orig.dst}:${toLb.orig.dport}, which sent it back to this node's NodePort ${nodeIp}:${port} with the client address kept (NATed to ${endpoint}); ` +
              // Only what the NodePort entry shows: an answer when it has seen replies, the client's reset when it is CLOSE.
              (back.unreplied ? '' : `the node answered from ${nodeIp}:${port}, not from the load balancer${back.state === 'CLOSE' ? ', and the client reset that answer' : ''}; `) +
              'its SYN has had no answer from the load balancer',
            evidence: [
              { source: 'conntrack', node: input.node, time: iso(input.time), raw: toLb.raw },
              { source: 'conntrack', node: input.node, time: iso(input.readAt('conntrack', key) ?? input.time), raw: back.raw },
            ],
            advice: advice(api, svc.id.split(':')[0] ?? svc.id),
            time: input.time,
            details: {
              nodePort: port,
              nodeAddress: nodeIp,
              ...(api === null
                ? {}
                : { loadBalancer: api.ingress, clientIpPreservation: api.preservation.preserved, lbTargetType: api.preservation.targetType, clientIpPreservationBecause: api.preservation.because }),
            },
          });
        }
      }
    }
  }
  return findings;
};
