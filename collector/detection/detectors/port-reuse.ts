// Seed 002 / kubernetes#81775: with net.ipv4.vs.conn_reuse_mode=0, a new SYN
// on a client tuple whose old connection sits in TIME_WAIT reuses that
// connection entry instead of being scheduled, so it goes to the endpoint the
// old connection had, even when a rollout has removed it. On the node this is
// one entry (IPVS connection or conntrack) going TIME_WAIT -> SYN_RECV/SYN_SENT
// on the same tuple, towards an endpoint no longer in the Service.
import { endpointKey } from '../endpoint-history.ts';
import { iso, tupleText, type Evidence, type Finding, type Tuple } from '../findings.ts';
import { kernelAtLeast, serviceAt, sysctlLine, type Detector, type DetectorInput } from './input.ts';

const NEW_CONNECTION_STATES = new Set(['SYN_RECV', 'SYN_SENT']);

interface Reuse {
  readonly source: 'ipvs-conn' | 'conntrack';
  readonly tuple: Tuple;
  readonly endpoint: { address: string; port: number };
  readonly beforeRaw: string;
  readonly beforeAt: number;
  readonly afterRaw: string;
}

function reuseOf(t: DetectorInput['transitions'][number]): Reuse | null {
  if (t.kind !== 'changed') return null;
  if (t.source === 'ipvs-conn') {
    const { before: b, after: a } = t;
    if (b.state !== 'TIME_WAIT' || !NEW_CONNECTION_STATES.has(a.state) || a.template) return null;
    return {
      source: 'ipvs-conn',
      tuple: { proto: a.proto.toLowerCase(), src: a.client.address, sport: a.client.port, dst: a.virtual.address, dport: a.virtual.port },
      endpoint: a.destination,
      beforeRaw: b.raw,
      beforeAt: t.beforeAt,
      afterRaw: a.raw,
    };
  }
  if (t.source === 'conntrack') {
    const { before: b, after: a } = t;
    if (b.state !== 'TIME_WAIT' || a.state === null || !NEW_CONNECTION_STATES.has(a.state)) return null;
    // Only NATed entries (a Service) have an endpoint different from where the client sent it.
    if (a.reply.src === a.orig.dst || a.reply.sport === null || a.orig.sport === null || a.orig.dport === null) return null;
    return {
      source: 'conntrack',
      tuple: { proto: a.proto, src: a.orig.src, sport: a.orig.sport, dst: a.orig.dst, dport: a.orig.dport },
      endpoint: { address: a.reply.src, port: a.reply.sport },
      beforeRaw: b.raw,
      beforeAt: t.beforeAt,
      afterRaw: a.raw,
    };
  }
  return null;
}

function adviceFor(input: DetectorInput, ipvs: boolean, reuseMode: string | null, reuse: Reuse): string {
  const portRange = 'widen net.ipv4.ip_local_port_range on busy clients to make reuse rarer.';
  // Without IPVS, conn_reuse_mode decides nothing: conntrack itself kept the TIME_WAIT entry's NAT for the new SYN instead of letting the rules pick again.
  if (!ipvs)
    return (
      `This Service is not programmed by IPVS: a SYN on a tuple whose conntrack entry is in TIME_WAIT normally gets a new entry, load-balanced by the rules anew, but this entry kept its old NAT. ` +
      `Delete the entries still NATed to the departed endpoint on ${input.node}: \`conntrack -D -p ${reuse.tuple.proto} --orig-dst ${reuse.tuple.dst} --dst-nat ${reuse.endpoint.address}\`, and ${portRange}`
    );
  const meanwhile = `Meanwhile set net.ipv4.vs.expire_nodest_conn=1 so entries to removed real servers are dropped, and ${portRange}`;
  // Mode 1 reschedules a SYN that finds a TIME_WAIT entry: the sysctl read here cannot be what kept the destination.
  if (reuseMode === '1')
    return (
      'IPVS kept the old connection entry and its destination for a new SYN on the same client tuple, yet net.ipv4.vs.conn_reuse_mode reads 1 here, under which IPVS reschedules such a SYN (the reuse of kubernetes/kubernetes#81775 is mode 0\'s): ' +
      'check what sets the sysctl and when (kube-proxy in IPVS mode writes it at start-up). ' +
      meanwhile
    );
  const kernelFixed = kernelAtLeast(input.kernel, 5, 9);
  return (
    `The new connection was not load-balanced: with net.ipv4.vs.conn_reuse_mode=${reuseMode ?? '?'} IPVS reuses a TIME_WAIT entry for a SYN on the same client tuple and keeps its old destination (kubernetes/kubernetes#81775). ` +
    (kernelFixed === false
      ? `This kernel (${input.kernel}) is older than 5.9 by version string, so kube-proxy (even >= 1.22, kubernetes/kubernetes#102122) sets conn_reuse_mode=0 on it, patched or not: upgrade the node kernel to >= 5.9, or run kube-proxy in iptables or nftables mode. `
      : kernelFixed === true
        ? `On kernels >= 5.9 (this one is ${input.kernel}) set net.ipv4.vs.conn_reuse_mode=1: kube-proxy >= 1.22 leaves it alone there (kubernetes/kubernetes#102122), so something else set 0. `
        : 'The kernel version was not read: on kernels >= 5.9 set net.ipv4.vs.conn_reuse_mode=1 (kube-proxy >= 1.22 leaves it alone there, kubernetes/kubernetes#102122); on older ones kube-proxy forces 0, so upgrade the kernel or run kube-proxy in iptables or nftables mode. ') +
    meanwhile
  );
}

export const detectPortReuse: Detector = (input) => {
  // IPVS (SYN_RECV) and conntrack (SYN_SENT) both show the same reuse: one finding per tuple.
  const byTuple = new Map<string, Reuse[]>();
  for (const t of input.transitions) {
    const reuse = reuseOf(t);
    if (reuse === null) continue;
    const k = tupleText(reuse.tuple);
    byTuple.set(k, [...(byTuple.get(k) ?? []), reuse]);
  }
  const findings: Finding[] = [];
  for (const group of byTuple.values()) {
    const reuse = group[0];
    if (reuse === undefined) continue;
    const service = serviceAt(input.endpoints.services, reuse.tuple.dst, reuse.tuple.dport ?? -1, reuse.tuple.proto);
    if (service === undefined) continue;
    const endpoint = endpointKey(reuse.endpoint);
    const state = input.endpoints.stateAt(service.id, endpoint, input.time);
    const programmed = service.endpoints.some((e) => endpointKey(e) === endpoint);
    // Reuse towards a live endpoint is ordinary TCP; only a departed or draining one is a failure.
    if (state === 'serving' || (state === 'unknown' && programmed)) continue;
    const severity = state === 'terminating' ? 'warning' : 'error';
    const ipvs = service.mode === 'ipvs' || group.some((r) => r.source === 'ipvs-conn');
    // Only IPVS reads conn_reuse_mode: on an iptables or nftables Service the line would be beside the point.
    const reuseMode = ipvs ? sysctlLine(input, 'net.ipv4.vs.conn_reuse_mode') : undefined;
    const span = input.endpoints.span(service.id, endpoint);
    const evidence: Evidence[] = group.flatMap((r) => [
      { source: r.source, node: input.node, time: iso(r.beforeAt), raw: r.beforeRaw },
      { source: r.source, node: input.node, time: iso(input.time), raw: r.afterRaw },
    ]);
    if (span !== undefined) evidence.push({ source: service.mode === 'ipvs' ? 'ipvs' : service.mode === 'nftables' ? 'nft' : 'iptables', node: input.node, time: iso(span.rawAt), raw: span.raw });
    if (reuseMode !== undefined) evidence.push({ source: 'sysctl', node: input.node, time: iso(input.time), raw: reuseMode.raw });
    const left = state === 'terminating' ? `is draining (weight 0) since ${span ? iso(span.terminatingSince ?? input.time) : 'before conntrail started'}` : span?.removedAt ? `left the Service at ${iso(span.removedAt)}` : 'is not an endpoint of the Service';
    findings.push({
      finding: 'port-reuse-to-removed-endpoint',
      severity,
      node: input.node,
      service: service.id,
      tuple: reuse.tuple,
      endpoint,
      summary: `${reuse.tuple.src}:${reuse.tuple.sport} reused its source port towards ${reuse.tuple.dst}:${reuse.tuple.dport} while the old connection was in TIME_WAIT; the new SYN went to ${endpoint}, which ${left}`,
      evidence,
      advice: adviceFor(input, ipvs, reuseMode?.value ?? null, reuse),
      time: input.time,
      details: { connReuseMode: reuseMode?.value ?? null, kernel: input.kernel, seenIn: group.map((r) => r.source).join(','), endpointState: state },
    });
  }
  return findings;
};
