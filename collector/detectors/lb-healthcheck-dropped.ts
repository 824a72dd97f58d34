// Seed 003: with externalTrafficPolicy Local in IPVS mode, kube-proxy binds
// the LB address on kube-ipvs0, so it lands in the `local` routing table. A
// load balancer that sources its health checks from that same address then
// sends packets whose source is "local" to the kernel, which drops them
// (accept_local=0) before conntrack confirms anything. Evidence is indirect:
// the local route, the sysctl, NodePort packet counters that rise with no
// matching conntrack entry, and the kernel's martian-source counter.
import type { Address, ConntrackEntry, IptablesRule, Route, StatRow, Sysctl } from '../../contract/records.ts';
import { iso, type Evidence, type Finding } from '../findings.ts';
import type { ProgrammedService } from '../services.ts';
import type { Detector, DetectorInput } from './input.ts';

const KNOBS = /\.(accept_local|rp_filter)$/;

function acceptLocal(input: DetectorInput): { on: boolean; lines: Sysctl[] } {
  const lines = [...input.records('sysctl').values()].filter((s) => /\.accept_local$/.test(s.name) && !s.name.includes('.lo.'));
  // IN_DEV_ACCEPT_LOCAL is `all || interface`: drops need every one of them off.
  return { on: lines.some((s) => s.value === '1'), lines };
}

export const detectLbHealthcheckDropped: Detector = (input) => {
  const localRoutes = [...input.records('routes').values()].filter((r: Route) => r.table === 'local' && r.type === 'local');
  const lbAddresses = new Map<string, ProgrammedService>();
  for (const svc of input.endpoints.services)
    for (const f of svc.frontends) if (f.kind === 'loadbalancer' && localRoutes.some((r) => r.dst === f.address || r.dst === `${f.address}/32`)) lbAddresses.set(f.address, svc);
  if (lbAddresses.size === 0) return [];
  const accept = acceptLocal(input);
  if (accept.on) return [];

  // What moved this step: configuration (latent risk) or counters (drops happening).
  const configChanged = input.transitions.some(
    (t) => (t.kind !== 'refreshed' && (t.source === 'routes' || t.source === 'addrs' || t.source === 'iptables' || t.source === 'nft' || t.source === 'ipvs')) || (t.source === 'sysctl' && KNOBS.test(((t.after ?? t.before) as Sysctl | undefined)?.name ?? '')),
  );
  const martianRise = input.transitions.some((t) => {
    if (t.source !== 'rt-cache-stat' || t.kind !== 'refreshed') return false;
    const b = (t.before as StatRow | undefined)?.counters.in_martian_src ?? 0;
    const a = (t.after as StatRow | undefined)?.counters.in_martian_src ?? 0;
    return a > b;
  });
  const conntrack = [...input.records('conntrack').values()] as ConntrackEntry[];
  const findings: Finding[] = [];
  for (const [lbIp, svc] of lbAddresses) {
    const counterRises = input.transitions.filter((t) => {
      if (t.source !== 'iptables' || t.kind !== 'refreshed') return false;
      const a = t.after as IptablesRule;
      const b = t.before as IptablesRule | undefined;
      return a.kind === 'rule' && a.chain === 'KUBE-NODEPORTS' && svc.nodePorts.includes(Number(a.dport)) && (a.packets ?? 0) > (b?.packets ?? 0);
    });
    const fromLb = conntrack.some((e) => e.orig.src === lbIp);
    const dropping = (counterRises.length > 0 && !fromLb) || martianRise;
    if (!dropping && !configChanged) continue;
    const route = localRoutes.find((r) => r.dst === lbIp || r.dst === `${lbIp}/32`);
    const addr = [...input.records('addrs').values()].find((a: Address) => a.address === lbIp);
    const nodeIp = [...input.records('addrs').values()].find((a: Address) => a.family === 'inet' && a.scope === 'global' && a.ifname !== addr?.ifname)?.address ?? null;
    const evidence: Evidence[] = [];
    const at = iso(input.time);
    if (route) evidence.push({ source: 'routes', node: input.node, time: at, raw: route.raw });
    if (addr) evidence.push({ source: 'addrs', node: input.node, time: at, raw: addr.raw });
    for (const s of accept.lines) evidence.push({ source: 'sysctl', node: input.node, time: at, raw: s.raw });
    for (const t of counterRises) evidence.push({ source: 'iptables', node: input.node, time: at, raw: (t.after as IptablesRule).raw });
    if (martianRise)
      for (const t of input.transitions) if (t.source === 'rt-cache-stat' && t.kind === 'refreshed') evidence.push({ source: 'rt-cache-stat', node: input.node, time: at, raw: (t.after as StatRow).raw });
    // With the API: a Local Service is health-checked on its healthCheckNodePort (kube-proxy's own server), not on the NodePort.
    const api = input.kube?.serviceForAddress(lbIp, svc.frontends.find((f) => f.address === lbIp)?.port ?? 0, svc.protocol || 'tcp', input.time) ?? null;
    const ingress = api?.loadBalancerIngress.find((i) => i.ip === lbIp) ?? null;
    const port = (api?.externalTrafficPolicy === 'Local' ? api.healthCheckNodePort : null) ?? svc.nodePorts[0] ?? null;
    findings.push({
      finding: 'lb-healthcheck-dropped',
      severity: dropping ? 'error' : 'warning',
      node: input.node,
      service: svc.id,
      tuple: { proto: svc.protocol || 'tcp', src: lbIp, sport: null, dst: nodeIp ?? '-', dport: port },
      endpoint: svc.endpoints[0] ? `${svc.endpoints[0].address}:${svc.endpoints[0].port}` : null,
      summary: dropping
        ? `packets from the load balancer address ${lbIp} to NodePort ${port ?? '?'} are being dropped on ${input.node}: ${lbIp} is a local address here (${addr?.ifname ?? 'local table'}) and accept_local is off, so the kernel discards them as martians before conntrack sees them; health checks sourced from the LB address fail`
        : `the load balancer address ${lbIp} is bound on ${input.node} (${addr?.ifname ?? 'local table'}) and accept_local is off: a load balancer whose health checks come from ${lbIp} will see this node as unhealthy`,
      evidence,
      advice:
        'Keep the LB address out of the node\'s local table: set `status.loadBalancer.ingress[].ipMode: Proxy` (Kubernetes >= 1.30, LoadBalancerIPMode) where the cloud provider supports it, so kube-proxy stops binding it on kube-ipvs0; ' +
        'otherwise have the provider source health checks from its reserved ranges rather than the LB address (kubernetes/kubernetes#79783). ' +
        'Setting accept_local=1 alone is not enough: replies to the LB address are then delivered locally and still never leave the node (seed 003).',
      time: input.time,
      details: {
        loadBalancerIP: lbIp,
        counterRises: counterRises.length,
        martianRise,
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
