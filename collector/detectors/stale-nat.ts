// Seed 002's conntrack side, and the classic UDP DNS case: after a rollout
// the rules point at the new pod, but a conntrack entry keeps NATing a
// client's tuple to the old one for as long as the client keeps sending
// (each packet re-arms the timer). kube-proxy deletes such UDP entries
// itself (`conntrack -D … --dst-nat OLD_IP`); when it did not, or for TCP,
// they stay. Idle leftovers expire on their own and are not findings.
import type { ConntrackEntry } from '../../contract/records.ts';
import { endpointKey } from '../endpoint-history.ts';
import { iso, type Finding } from '../findings.ts';
import { serviceAt, type Detector } from './input.ts';

const CLOSING = new Set(['TIME_WAIT', 'CLOSE', 'FIN_WAIT', 'LAST_ACK', 'CLOSE_WAIT']);

const sameReply = (a: ConntrackEntry, b: ConntrackEntry): boolean =>
  a.reply.src === b.reply.src && a.reply.sport === b.reply.sport && a.reply.dst === b.reply.dst && a.reply.dport === b.reply.dport;

export const detectStaleNat: Detector = (input) => {
  // Traffic on a NATed tuple: its timer re-armed, or its state moved on (UDP
  // turning ASSURED) with the same NAT.
  const active: { entry: ConntrackEntry; before?: ConntrackEntry }[] = [];
  for (const t of input.transitions) {
    if (t.source !== 'conntrack' || t.after === undefined || t.before === undefined) continue;
    const before = t.before as ConntrackEntry;
    const after = t.after as ConntrackEntry;
    // A tuple reused for a new connection (back to SYN_SENT) is port reuse, that detector's case.
    const reused = after.state === 'SYN_SENT' || after.state === 'SYN_RECV';
    if (t.kind === 'refreshed' || (t.kind === 'changed' && sameReply(before, after) && !reused)) active.push({ entry: after, before });
  }
  // An endpoint that left at this step: entries still carrying traffic to it
  // in the last seconds are stale now, before their next re-arm can show.
  const leftNow = new Set(input.endpoints.all().filter((s) => s.removedAt === input.time).map((s) => s.endpoint));
  if (leftNow.size > 0)
    for (const { entry } of input.recentActivity.entries())
      if (entry.reply.sport !== null && leftNow.has(endpointKey({ address: entry.reply.src, port: entry.reply.sport }))) active.push({ entry });

  const findings: Finding[] = [];
  const seen = new Set<string>();
  for (const { entry: e, before } of active) {
    if (e.state !== null && CLOSING.has(e.state)) continue;
    if (e.reply.src === e.orig.dst || e.orig.dport === null || e.reply.sport === null) continue;
    const service = serviceAt(input.endpoints.services, e.orig.dst, e.orig.dport, e.proto);
    if (service === undefined) continue;
    const endpoint = endpointKey({ address: e.reply.src, port: e.reply.sport });
    const state = input.endpoints.stateAt(service.id, endpoint, input.time);
    const programmed = service.endpoints.some((x) => endpointKey(x) === endpoint);
    if (state === 'serving' || state === 'terminating' || (state === 'unknown' && programmed)) continue;
    const tupleKey = `${e.proto} ${e.orig.src}:${e.orig.sport ?? '-'} ${e.orig.dst}:${e.orig.dport}`;
    if (seen.has(tupleKey)) continue;
    seen.add(tupleKey);
    const span = input.endpoints.span(service.id, endpoint);
    const evidence = [
      ...(before ? [{ source: 'conntrack' as const, node: input.node, time: iso(input.prevTime ?? input.time), raw: before.raw }] : []),
      { source: 'conntrack' as const, node: input.node, time: iso(input.time), raw: e.raw },
      ...(span ? [{ source: 'iptables' as const, node: input.node, time: iso(span.firstSeen), raw: span.raw }] : []),
    ];
    findings.push({
      finding: 'stale-nat-to-removed-endpoint',
      severity: 'error',
      node: input.node,
      service: service.id,
      tuple: { proto: e.proto, src: e.orig.src, sport: e.orig.sport, dst: e.orig.dst, dport: e.orig.dport },
      endpoint,
      summary: `${e.orig.src}:${e.orig.sport ?? '-'} keeps sending to ${e.orig.dst}:${e.orig.dport} and conntrack keeps NATing it to ${endpoint}, which ${span?.removedAt ? `left the Service at ${iso(span.removedAt)}` : 'is not an endpoint of the Service'}; its timer is re-armed by every packet, so it will not expire`,
      evidence,
      advice:
        `Delete the stale entry on ${input.node}: \`conntrack -D -p ${e.proto} --orig-dst ${e.orig.dst} --dst-nat ${e.reply.src}\` (what kube-proxy runs for UDP endpoints it removes; if it did not, check kube-proxy's log for conntrack errors and that the conntrack binary is in its image). ` +
        'For clients that pin a source port (DNS resolvers), a rollout must clear these entries or the client stays pinned to the removed pod for as long as it keeps sending.',
      time: input.time,
      details: { timeout: e.timeout, state: e.state, endpointState: state },
    });
  }
  return findings;
};
