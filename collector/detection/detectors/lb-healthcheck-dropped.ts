// Seed 003: with externalTrafficPolicy Local in IPVS mode, kube-proxy binds
// every Service address, the LB IP included, on kube-ipvs0, so it lands in
// the `local` routing table. A load balancer that sources its health checks
// from that same address then sends packets whose source is "local" to the
// kernel, which drops them (accept_local=0) at the routing decision, before
// conntrack confirms anything. Evidence is indirect: the local route, the
// sysctl, the kernel's martian-source counter, NodePort rule counters that
// rise with no conntrack entry to show for it, and, where log_martians=1 and
// the agent can read the kernel log, the kernel's own `martian source … from
// <LB address>` lines (the kmsg source; when it cannot read the log the agent
// reports that source unavailable once, and the other evidence stands alone).
//
// Which addresses are LB or external ones comes from the Service model in
// every mode (iptables comments, nftables external chains, IPVS ipsets, the
// API); in IPVS mode an address on kube-ipvs0 that the ipsets do not list as
// a ClusterIP is one too, even when nothing else names it.
import type { Address, IptablesRule, KmsgMartian, Route, Sysctl } from '../../../contract/records.ts';
import { iso, type Evidence, type Finding } from '../findings.ts';
import type { ProgrammedService } from '../services.ts';
import type { Detector, NodeIndex } from './input.ts';

const KNOBS = /\.(accept_local|rp_filter)$/;
/** IPVS mode's NodePort and health-check sets, matched in the KUBE-NODE-PORT chain. */
const IPVS_NODE_PORT_SET = /^KUBE-(NODE-PORT-|HEALTH-CHECK-NODE-PORT)/;

function acceptLocal(input: NodeIndex): { on: boolean; lines: Sysctl[] } {
  const lines = [...input.records('sysctl').values()].filter((s) => /\.accept_local$/.test(s.name) && !s.name.includes('.lo.'));
  // IN_DEV_ACCEPT_LOCAL is `all || interface`: drops need every one of them off.
  return { on: lines.some((s) => s.value === '1'), lines };
}

interface Candidate {
  readonly address: string;
  /** The Service it fronts, when the model knows it. */
  readonly service: ProgrammedService | null;
  readonly route: Route;
  readonly why: string;
}

function candidates(input: NodeIndex, localRoutes: readonly Route[]): Candidate[] {
  const routeOf = (address: string): Route | undefined => localRoutes.find((r) => r.dst === address || r.dst === `${address}/32` || r.dst === `${address}/128`);
  const out = new Map<string, Candidate>();
  for (const svc of input.endpoints.services)
    for (const f of svc.frontends) {
      if (f.kind !== 'loadbalancer' && f.kind !== 'external') continue;
      const route = routeOf(f.address);
      if (route !== undefined && !out.has(f.address)) out.set(f.address, { address: f.address, service: svc, route, why: `${f.kind === 'loadbalancer' ? 'load balancer' : 'external'} address of ${svc.id}` });
    }
  // IPVS mode: kube-ipvs0 holds every Service address; with the ipsets to say which are ClusterIPs, the rest are LB or external ones.
  const members = [...input.records('ipset').values()].flatMap((r) => (r.kind === 'member' ? [r] : []));
  if (members.length > 0) {
    const clusterIps = new Set(members.filter((m) => m.set === 'KUBE-CLUSTER-IP').map((m) => m.address));
    for (const a of input.records('addrs').values()) {
      if (a.ifname !== 'kube-ipvs0' || clusterIps.has(a.address) || out.has(a.address)) continue;
      const route = routeOf(a.address);
      if (route !== undefined) out.set(a.address, { address: a.address, service: null, route, why: 'bound on kube-ipvs0 and not a ClusterIP in KUBE-CLUSTER-IP' });
    }
  }
  return [...out.values()];
}

/** Kernel lines quoted per finding: the newest; the count is in details. */
const MAX_KERNEL_LINES = 5;

/**
 * Martian-source lines the kernel logged since the last step. A record's
 * timestamp counts from boot and the collector has no boot time to read it
 * against, so "new" is "added this step while the source already held
 * something": the first read of a ring (the node's first step, or a kernel
 * log the agent has only now become able to read) is history of unknown age,
 * and lines left by an earlier incident would otherwise read as drops now.
 * The cost is one line: a martian logged into a ring that held none counts
 * from the next one (health checks repeat, and in_martian_src rises meanwhile).
 */
function newKernelMartians(input: NodeIndex): KmsgMartian[] {
  const added: KmsgMartian[] = [];
  let removed = 0;
  for (const t of input.transitions) {
    if (t.source !== 'kmsg') continue;
    if (t.kind === 'added') added.push(t.after);
    else if (t.kind === 'removed') removed++;
  }
  const heldBefore = input.records('kmsg').size - added.length + removed;
  if (input.prevTime === null || heldBefore <= 0) return [];
  return added.filter((m) => m.kind === 'martian-source');
}

export const detectLbHealthcheckDropped: Detector = (input) => {
  const localRoutes = [...input.records('routes').values()].filter((r) => r.table === 'local' && r.type === 'local');
  const found = candidates(input, localRoutes);
  if (found.length === 0) return [];
  const accept = acceptLocal(input);
  if (accept.on) return [];

  // What moved this step: configuration (latent risk, said once) or counters (drops happening).
  const configChanged = input.transitions.some(
    (t) =>
      (t.kind !== 'refreshed' && (t.source === 'routes' || t.source === 'addrs' || t.source === 'iptables' || t.source === 'nft' || t.source === 'ipvs' || t.source === 'ipset')) ||
      (t.source === 'sysctl' && KNOBS.test((t.after ?? t.before).name)),
  );
  const martianRises = input.transitions.flatMap((t) => {
    if (t.source !== 'rt-cache-stat' || t.kind !== 'refreshed') return [];
    const rise = (t.after.counters.in_martian_src ?? 0) - (t.before.counters.in_martian_src ?? 0);
    return rise > 0 ? [{ t, rise }] : [];
  });
  const martianRise = martianRises.reduce((n, r) => n + r.rise, 0);
  const loggedMartians = newKernelMartians(input);
  const conntrack = [...input.records('conntrack').values()];
  const hcPortsFromSets = [...input.records('ipset').values()].flatMap((r) => (r.kind === 'member' && r.set === 'KUBE-HEALTH-CHECK-NODE-PORT' && r.port !== null ? [r.port] : []));
  // IPVS mode counts every NodePort on one set-matching rule: what it counted may be any of the sets' ports.
  const nodePortsFromSets = [...input.records('ipset').values()].flatMap((r) => (r.kind === 'member' && IPVS_NODE_PORT_SET.test(r.set) && r.port !== null ? [r.port] : []));
  const addrs = [...input.records('addrs').values()];
  const findings: Finding[] = [];
  for (const c of found) {
    const svc = c.service;
    const api = input.kube?.serviceForAddress(c.address, svc?.frontends.find((f) => f.address === c.address)?.port ?? 0, svc?.protocol || 'tcp', input.time) ?? null;
    const hcPort = svc?.healthCheckNodePort ?? (api?.externalTrafficPolicy === 'Local' ? api.healthCheckNodePort : null) ?? (hcPortsFromSets.length === 1 ? (hcPortsFromSets[0] ?? null) : null);
    const nodePorts = new Set([...(svc?.nodePorts ?? []), ...nodePortsFromSets, ...(api?.ports.flatMap((p) => (p.nodePort === null ? [] : [p.nodePort])) ?? []), ...(hcPort === null ? [] : [hcPort])]);
    // Rules that count packets to the NodePorts in PREROUTING, before the routing decision drops them.
    const counterRises = input.transitions.flatMap((t) => {
      if (t.source !== 'iptables' || t.kind !== 'refreshed' || t.after.kind !== 'rule' || t.before.kind !== 'rule') return [];
      const a: IptablesRule = t.after;
      const perPort = a.table === 'nat' && a.chain === 'KUBE-NODEPORTS' && nodePorts.has(Number(a.dport));
      const setIndex = a.args.indexOf('--match-set');
      const ipvsSet = a.chain === 'KUBE-NODE-PORT' && setIndex >= 0 && IPVS_NODE_PORT_SET.test(a.args[setIndex + 1] ?? '');
      return (perPort || ipvsSet) && (a.packets ?? 0) > (t.before.packets ?? 0) ? [a] : [];
    });
    const fromLb = conntrack.some((e) => e.orig.src === c.address);
    const confirmedToPorts = conntrack.some((e) => e.orig.dport !== null && nodePorts.has(e.orig.dport));
    const unconfirmed = counterRises.length > 0 && !fromLb && !confirmedToPorts;
    // The logged destination is the one after DNAT (a pod in iptables mode), so only the source is matched.
    const logged = loggedMartians.filter((m) => m.src === c.address);
    // in_martian_src is host-wide and counts martians from any source: it backs up the specific evidence (rule counters the
    // LB's packets move with nothing confirmed, or the kernel naming the LB address) but never proves a drop on its own.
    const dropping = unconfirmed || logged.length > 0;
    if (!dropping && !configChanged) continue;
    const addr = addrs.find((a: Address) => a.address === c.address);
    const nodeIp = addrs.find((a: Address) => a.family === 'inet' && a.scope === 'global' && a.ifname !== 'kube-ipvs0' && a.ifname !== addr?.ifname)?.address ?? null;
    const at = (source: 'routes' | 'addrs' | 'sysctl' | 'iptables' | 'rt-cache-stat' | 'kmsg', key: string): string => iso(input.readAt(source, key) ?? input.time);
    const evidence: Evidence[] = [{ source: 'routes', node: input.node, time: iso(input.time), raw: c.route.raw }];
    if (addr) evidence.push({ source: 'addrs', node: input.node, time: iso(input.time), raw: addr.raw });
    for (const s of accept.lines) evidence.push({ source: 'sysctl', node: input.node, time: at('sysctl', s.name), raw: s.raw });
    for (const r of counterRises) evidence.push({ source: 'iptables', node: input.node, time: iso(input.time), raw: r.raw });
    if (dropping) for (const { t } of martianRises) evidence.push({ source: 'rt-cache-stat', node: input.node, time: iso(t.beforeAt), raw: t.before.raw }, { source: 'rt-cache-stat', node: input.node, time: iso(input.time), raw: t.after.raw });
    // The kernel line as read, at the time it was read (its own timestamp is since boot).
    for (const m of logged.slice(-MAX_KERNEL_LINES)) evidence.push({ source: 'kmsg', node: input.node, time: at('kmsg', String(m.seq)), raw: m.raw });
    const ingress = api?.loadBalancerIngress.find((i) => i.ip === c.address) ?? null;
    const port = hcPort ?? [...nodePorts][0] ?? null;
    const where = `${addr?.ifname ?? 'the local table'}`;
    const shownParts = [
      ...(logged.length > 0 ? [`the kernel logged ${logged.length === 1 ? 'a' : logged.length} \`martian source … from ${c.address}\` line${logged.length === 1 ? '' : 's'}`] : []),
      ...(unconfirmed ? [`NodePort rules counted ${counterRises.length === 1 ? 'packets' : 'packets on several rules'} that no conntrack entry shows`] : []),
      ...(martianRise > 0 ? [`the kernel counted ${martianRise} more martian-source packets (in_martian_src, from any source on this host)`] : []),
    ];
    const shown = shownParts.join(' and ');
    findings.push({
      finding: 'lb-healthcheck-dropped',
      severity: dropping ? 'error' : 'warning',
      node: input.node,
      service: svc?.id ?? (api === null ? null : `${api.namespace}/${api.name}`),
      tuple: { proto: svc?.protocol || 'tcp', src: c.address, sport: null, dst: nodeIp ?? '-', dport: port },
      endpoint: svc?.endpoints[0] ? `${svc.endpoints[0].address}:${svc.endpoints[0].port}` : null,
      summary: dropping
        ? `packets are being dropped on ${input.node} while ${c.address} (${c.why}) is a local address here (${where}) and accept_local is off: ${shown}; health checks a load balancer sends from ${c.address}${port === null ? '' : ` to port ${port}`} are dropped this way before conntrack sees them`
        : `${c.address} (${c.why}) is bound on ${input.node} (${where}) and accept_local is off: a load balancer whose health checks come from ${c.address}${port === null ? '' : ` (to port ${port})`} will see this node as unhealthy`,
      evidence,
      advice:
        'Keep the LB address out of the node\'s local table: set `status.loadBalancer.ingress[].ipMode: Proxy` (Kubernetes >= 1.30, LoadBalancerIPMode) where the cloud provider supports it, so kube-proxy stops binding it on kube-ipvs0; ' +
        'otherwise have the provider source health checks from its reserved ranges rather than the LB address (kubernetes/kubernetes#79783), or run kube-proxy in iptables or nftables mode, which bind nothing. ' +
        'Setting accept_local=1 alone is not enough: replies to the LB address are then delivered locally and still never leave the node (seed 003).',
      time: input.time,
      details: {
        loadBalancerIP: c.address,
        mode: svc?.mode ?? 'ipvs',
        healthCheckPort: hcPort,
        counterRises: counterRises.length,
        martianRise,
        kernelLogLines: logged.length,
        conntrackFromLb: fromLb,
        ...(api === null
          ? {}
          : {
              externalTrafficPolicy: api.externalTrafficPolicy,
              healthCheckNodePort: api.healthCheckNodePort,
              ipMode: ingress?.ipMode ?? null,
              // ipMode Proxy means kube-proxy should not have bound it: something else did.
              boundDespiteProxyMode: ingress?.ipMode === 'Proxy',
            }),
      },
    });
  }
  return findings;
};
