// Seed 002's conntrack side, and the classic UDP DNS case: after a rollout
// the rules point at the new pod, but a conntrack entry keeps NATing a
// client's tuple to the old one for as long as the client keeps sending
// (each packet re-arms the timer).
//
// kube-proxy deletes the UDP entries of an endpoint it removed itself
// (`conntrack -D … --dst-nat OLD_IP`), right after it syncs the rules, so a
// 1 Hz sampler regularly sees the rules changed and the entry not yet gone.
// An entry is stale only when it outlives that cleanup: still there, still
// NATed to the departed endpoint, and showing traffic (timer re-armed, or
// its state moving with the same NAT) at a sample at least GRACE_STEPS
// samples and GRACE_MS after the endpoint left. Entries seen once and left
// to expire are not findings: nothing keeps them alive.
//
// Only connectionless flows (UDP): a TCP connection established to a pod that
// has left the Service is how graceful termination drains (the pod keeps
// serving its open connections), and kube-proxy keeps those entries on
// purpose; a TCP flow into a pod that is really gone shows as unanswered
// retransmissions, which unanswered-syn and port-reuse report.
import type { ConntrackEntry } from '../../../contract/records.ts';
import { endpointKey } from '../endpoint-history.ts';
import { iso, type Evidence, type Finding } from '../findings.ts';
import { serviceAt, type Detector } from './input.ts';

/** kube-proxy's cleanup runs in the same sync as the rule change; two samples and two seconds cover it. */
export const GRACE_STEPS = 2;
export const GRACE_MS = 2_000;

const CONNECTIONLESS = new Set(['udp', 'udplite']);

const sameReply = (a: ConntrackEntry, b: ConntrackEntry): boolean =>
  a.reply.src === b.reply.src && a.reply.sport === b.reply.sport && a.reply.dst === b.reply.dst && a.reply.dport === b.reply.dport;

export const detectStaleNat: Detector = (input) => {
  const findings: Finding[] = [];
  for (const t of input.transitions) {
    if (t.source !== 'conntrack' || (t.kind !== 'refreshed' && t.kind !== 'changed')) continue;
    const { before, after: e } = t;
    if (!CONNECTIONLESS.has(e.proto) || !sameReply(before, e)) continue;
    // `refreshed` is the contract's re-arm (the agent measures it against its reference, contract/sources.ts); `changed` with the same NAT is state moving.
    const rearmed = t.kind === 'refreshed';
    if (e.reply.src === e.orig.dst || e.orig.dport === null || e.reply.sport === null) continue;
    const service = serviceAt(input.endpoints.services, e.orig.dst, e.orig.dport, e.proto);
    if (service === undefined) continue;
    const endpoint = endpointKey({ address: e.reply.src, port: e.reply.sport });
    if (service.endpoints.some((x) => endpointKey(x) === endpoint)) continue;
    const span = input.endpoints.span(service.id, endpoint);
    const state = input.endpoints.stateAt(service.id, endpoint, input.time);
    // Never seen in this Service: it had left before conntrail began watching, which is when kube-proxy's grace starts counting.
    const removedAt = span === undefined || state === 'unknown' ? input.watchedSince : state === 'removed' ? span.removedAt : null;
    if (removedAt === null) continue;
    const since = input.time - removedAt;
    const steps = input.stepsSince(removedAt);
    if (since < GRACE_MS || steps < GRACE_STEPS) continue;
    const beforeAt = t.beforeAt;
    const evidence: Evidence[] = [
      { source: 'conntrack', node: input.node, time: iso(beforeAt), raw: before.raw },
      { source: 'conntrack', node: input.node, time: iso(input.time), raw: e.raw },
      ...(span === undefined ? [] : [{ source: service.mode === 'ipvs' ? ('ipvs' as const) : service.mode === 'nftables' ? ('nft' as const) : ('iptables' as const), node: input.node, time: iso(span.rawAt), raw: span.raw }]),
    ];
    const left = span === undefined || state === 'unknown' ? `is not an endpoint of the Service (not since conntrail began watching at ${iso(removedAt)})` : `left the Service at ${iso(removedAt)}`;
    const what = rearmed
      ? `its timer read ${before.timeout ?? '?'} s at ${iso(beforeAt)} and ${e.timeout ?? '?'} s at ${iso(input.time)}, ${Math.round((input.time - beforeAt) / 1000)} s later: re-armed by new packets`
      : `${movedText(before, e)} between ${iso(beforeAt)} and ${iso(input.time)}, with the same NAT${before.timeout !== null && e.timeout !== null && e.timeout > before.timeout ? `, its timer going from ${before.timeout} s to ${e.timeout} s` : ''}: traffic still flows on it`;
    findings.push({
      finding: 'stale-nat-to-removed-endpoint',
      severity: 'error',
      node: input.node,
      service: service.id,
      tuple: { proto: e.proto, src: e.orig.src, sport: e.orig.sport, dst: e.orig.dst, dport: e.orig.dport },
      endpoint,
      summary: `${e.orig.src}:${e.orig.sport ?? '-'} is still sending to ${e.orig.dst}:${e.orig.dport} and conntrack still NATs it to ${endpoint}, which ${left} (${Math.round(since / 1000)} s and ${steps} samples ago): ${what}`,
      evidence,
      advice:
        `Delete the stale entry on ${input.node}: \`conntrack -D -p ${e.proto} --orig-dst ${e.orig.dst} --dst-nat ${e.reply.src}\` (what kube-proxy runs for UDP endpoints it removes; if it did not, check kube-proxy's log for conntrack errors and that the conntrack binary is in its image). ` +
        'While the client keeps sending on this source port the entry never expires: clients that pin a source port (DNS resolvers) stay pinned to the removed pod until the entry is deleted.',
      time: input.time,
      details: { timeout: e.timeout, state: e.state, endpointRemovedAt: iso(removedAt), samplesSinceRemoval: steps, timerRearmed: rearmed },
    });
  }
  return findings;
};

/** What moved between two readings of one entry, in the words of the conntrack line: UDP has no state, only its flags. */
function movedText(b: { state: string | null; assured: boolean; unreplied: boolean }, a: { state: string | null; assured: boolean; unreplied: boolean }): string {
  const parts: string[] = [];
  if (b.state !== a.state) parts.push(`its state went from ${b.state ?? 'none'} to ${a.state ?? 'none'}`);
  if (b.unreplied && !a.unreplied) parts.push('it lost [UNREPLIED] (the endpoint answered)');
  if (!b.assured && a.assured) parts.push('it became [ASSURED] (packets both ways)');
  if (b.assured && !a.assured) parts.push('it lost [ASSURED]');
  if (!b.unreplied && a.unreplied) parts.push('it became [UNREPLIED]');
  return parts.length === 0 ? 'its entry changed' : parts.join(' and ');
}
