// The symptom itself: a SYN to a Service address, NodePort or load balancer
// that stays unanswered across samples, attributed to the endpoint it was
// NATed to. The engine drops it where a more specific finding on the same
// client explains it.
import { iso, type Evidence, type Finding } from '../findings.ts';
import { serviceAt, type Detector } from './input.ts';

/** A SYN-ACK takes milliseconds; two samples without one is a client retransmitting into the void. */
export const UNANSWERED_AFTER_MS = 2_000;

export const detectUnansweredSyn: Detector = (input) => {
  const findings: Finding[] = [];
  const conntrack = input.records('conntrack');
  // Reported once, at the first step that finds it past the threshold: waiting at least that long now, and less at the step before.
  const upTo = input.time - UNANSWERED_AFTER_MS;
  const after = input.prevTime === null ? null : input.prevTime - UNANSWERED_AFTER_MS;
  for (const p of input.pendingSyns(after, upTo)) {
    const e = conntrack.get(p.key);
    if (e === undefined || e.orig.dport === null) continue;
    const service = serviceAt(input.endpoints.services, e.orig.dst, e.orig.dport, e.proto);
    if (service === undefined) continue;
    const natted = e.reply.src !== e.orig.dst;
    const endpoint = natted && e.reply.sport !== null ? `${e.reply.src}:${e.reply.sport}` : null;
    const waited = Math.round((input.time - p.since) / 1000);
    // Each line at the sample it was read in: unanswered when first seen, and as last re-read (a retransmission re-arming it).
    const lastAt = input.readAt('conntrack', p.key) ?? p.since;
    const evidence: Evidence[] = [{ source: 'conntrack', node: input.node, time: iso(p.since), raw: p.firstRaw }];
    if (lastAt > p.since && e.raw !== p.firstRaw) evidence.push({ source: 'conntrack', node: input.node, time: iso(lastAt), raw: e.raw });
    findings.push({
      finding: 'unanswered-syn',
      severity: 'warning',
      node: input.node,
      service: service.id,
      tuple: { proto: e.proto, src: e.orig.src, sport: e.orig.sport, dst: e.orig.dst, dport: e.orig.dport },
      endpoint,
      summary: `${e.orig.src}:${e.orig.sport ?? '-'} has had no answer to its SYN to ${e.orig.dst}:${e.orig.dport}${endpoint ? ` (sent on to ${endpoint})` : ''} for ${waited} s`,
      evidence,
      advice: endpoint
        ? `Check that ${endpoint} is alive and reachable from ${input.node} (pod running, its node routing the pod range, no NetworkPolicy dropping it) and that kube-proxy has caught up with its removal; capture on the way: \`tcpdump -nn host ${e.reply.src} and port ${e.reply.sport}\`.`
        : `Nothing on ${input.node} NATed this SYN: check the Service has endpoints and kube-proxy has programmed them here.`,
      time: input.time,
      details: { unansweredForMs: input.time - p.since },
    });
  }
  return findings;
};
