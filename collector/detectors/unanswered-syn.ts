// The symptom itself: SYNs to a Service address, NodePort or load balancer
// that stay unanswered across samples (the client retransmits, re-arming the
// entry's timer), attributed to the endpoint they were NATed to. The engine
// drops it where a more specific finding on the same tuple explains it.
import type { ConntrackEntry } from '../../contract/records.ts';
import { iso, type Finding } from '../findings.ts';
import { serviceAt, type Detector } from './input.ts';

export const detectUnansweredSyn: Detector = (input) => {
  const findings: Finding[] = [];
  for (const t of input.transitions) {
    if (t.source !== 'conntrack' || t.kind !== 'refreshed' || t.after === undefined || t.before === undefined) continue;
    const e = t.after as ConntrackEntry;
    if (e.state !== 'SYN_SENT' || !e.unreplied || e.orig.dport === null) continue;
    const service = serviceAt(input.endpoints.services, e.orig.dst, e.orig.dport, e.proto);
    if (service === undefined) continue;
    const natted = e.reply.src !== e.orig.dst;
    const endpoint = natted && e.reply.sport !== null ? `${e.reply.src}:${e.reply.sport}` : null;
    findings.push({
      finding: 'unanswered-syn',
      severity: 'warning',
      node: input.node,
      service: service.id,
      tuple: { proto: e.proto, src: e.orig.src, sport: e.orig.sport, dst: e.orig.dst, dport: e.orig.dport },
      endpoint,
      summary: `${e.orig.src}:${e.orig.sport ?? '-'} keeps retransmitting its SYN to ${e.orig.dst}:${e.orig.dport}${endpoint ? ` (sent on to ${endpoint})` : ''} and gets no answer`,
      evidence: [
        { source: 'conntrack', node: input.node, time: iso(input.prevTime ?? input.time), raw: (t.before as ConntrackEntry).raw },
        { source: 'conntrack', node: input.node, time: iso(input.time), raw: e.raw },
      ],
      advice: endpoint
        ? `Check that ${endpoint} is alive and reachable from ${input.node} (pod running, its node routing the pod range, no NetworkPolicy dropping it); capture on the endpoint's node: \`tcpdump -nn host ${e.reply.src} and port ${e.reply.sport}\`.`
        : `Nothing on ${input.node} NATed this SYN: check the Service has endpoints and kube-proxy has programmed them here.`,
      time: input.time,
    });
  }
  return findings;
};
