// The renderers against kube-proxy's own expectations: every expected line
// below is copied from kubernetes/kubernetes test files
// (pkg/proxy/iptables/cleanup_test.go TestCleanupLeftovers initial state,
// pkg/proxy/nftables/proxier_test.go baseRules and TestOverallNFTablesRules,
// pkg/proxy/ipvs/proxier_test.go expected ipset members, iptables jumps and
// IPVS state), from the rule text pkg/proxy/ipvs/proxier.go writes, from
// ipvsadm's printf formats, or from the seeds' output, never from our own output.
import { describe, expect, it } from 'vitest';
import {
  IPVS_IPSETS,
  ipvsState,
  iptablesEndpointChain,
  iptablesServiceChains,
  nftEndpointChain,
  nftServiceChains,
  probability,
  renderIpsetRestore,
  renderIptablesRestore,
  renderIpvsadmList,
  renderIpvsIptablesRestore,
  renderNftRuleset,
  servicePortName,
  type EndpointModel,
  type ProxyModel,
  type ServiceModel,
} from './kube-proxy.ts';

const ep = (ip: string, nodeName = 'other-node', ready = true): EndpointModel => ({ ip, port: 80, nodeName, ready });

// The Services of kube-proxy's TestOverallIPTablesRules / TestOverallNFTablesRules
// that the model can express (no externalIPs, no session affinity).
const svc1: ServiceModel = { namespace: 'ns1', name: 'svc1', portName: 'p80', protocol: 'tcp', clusterIP: '172.30.0.41', port: 80, externalTrafficPolicy: 'Cluster', endpoints: [ep('10.180.0.1')] };
const svc2: ServiceModel = {
  namespace: 'ns2', name: 'svc2', portName: 'p80', protocol: 'tcp', clusterIP: '172.30.0.42', port: 80, nodePort: 3001, loadBalancerIP: '1.2.3.4',
  externalTrafficPolicy: 'Local', healthCheckNodePort: 30000, endpoints: [ep('10.180.0.2')],
};
const svc3: ServiceModel = { namespace: 'ns3', name: 'svc3', portName: 'p80', protocol: 'tcp', clusterIP: '172.30.0.43', port: 80, nodePort: 3003, externalTrafficPolicy: 'Cluster', endpoints: [ep('10.180.0.3')] };
const svc4: ServiceModel = {
  namespace: 'ns4', name: 'svc4', portName: 'p80', protocol: 'tcp', clusterIP: '172.30.0.44', port: 80, externalTrafficPolicy: 'Cluster',
  endpoints: [ep('10.180.0.4'), ep('10.180.0.5', 'test-node')],
};
const svc5: ServiceModel = {
  namespace: 'ns5', name: 'svc5', portName: 'p80', protocol: 'tcp', clusterIP: '172.30.0.45', port: 80, nodePort: 3002, loadBalancerIP: '5.6.7.8',
  externalTrafficPolicy: 'Cluster', loadBalancerSourceRanges: ['203.0.113.0/25'], endpoints: [ep('10.180.0.3')],
};
const svc6: ServiceModel = { namespace: 'ns6', name: 'svc6', portName: 'p80', protocol: 'tcp', clusterIP: '172.30.0.46', port: 80, externalTrafficPolicy: 'Cluster', endpoints: [] };
const upstream: ProxyModel = { services: [svc1, svc2, svc3, svc4, svc5, svc6] };

describe('chain names', () => {
  it.each([
    [svc1, 'KUBE-SVC-XPGD46QRK7WJZT7O'],
    [svc2, 'KUBE-SVC-GNZBNJ2PO5MGZ6GT'],
    [svc3, 'KUBE-SVC-X27LE4BHSL4DOUIK'],
    [svc4, 'KUBE-SVC-4SW47YFZTEDKD3PK'],
    [svc5, 'KUBE-SVC-NUKIZ6OKUXPJNT4C'],
  ])('hashes %# the way kube-proxy does (KUBE-SVC = base32(sha256(ns/name:port + protocol))[:16])', (svc, chain) => {
    expect(iptablesServiceChains(svc).svc).toBe(chain);
  });

  it.each([
    [svc1, '10.180.0.1', 'KUBE-SEP-SXIVWICOYRO3J4NJ'],
    [svc2, '10.180.0.2', 'KUBE-SEP-RS4RBKLTHTF2IUXJ'],
    [svc4, '10.180.0.4', 'KUBE-SEP-UKSFD7AGPMPPLUHC'],
    [svc4, '10.180.0.5', 'KUBE-SEP-C6EBXVWJJZMIWKLZ'],
    [svc5, '10.180.0.3', 'KUBE-SEP-I77PXRDZVX7PMWMN'],
  ])('hashes the endpoint into KUBE-SEP (%#)', (svc, ip, chain) => {
    expect(iptablesEndpointChain(svc, { ip, port: 80 })).toBe(chain);
  });

  it('names an unnamed port ns/name, matching the chains of seed 000', () => {
    const seed = { namespace: 'nginx-demo', name: 'service-nginx-demo', portName: '', protocol: 'tcp' } as const;
    expect(servicePortName(seed)).toBe('nginx-demo/service-nginx-demo');
    expect(iptablesServiceChains(seed).svc).toBe('KUBE-SVC-WGW5ZPXP7HZEBG5V');
    expect(iptablesEndpointChain(seed, { ip: '192.168.21.160', port: 80 })).toBe('KUBE-SEP-4S7NMWHTQECMLTDA');
    expect(iptablesEndpointChain(seed, { ip: '192.168.44.248', port: 80 })).toBe('KUBE-SEP-I2YR57KE2BLSY73L');
    expect(iptablesEndpointChain(seed, { ip: '192.168.73.88', port: 80 })).toBe('KUBE-SEP-RRH7WDK5LM6YECXZ');
  });

  it.each([
    [svc1, 'service-ULMVA6XW-ns1/svc1/tcp/p80', '10.180.0.1', 'endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80'],
    [svc2, 'service-42NFTM6N-ns2/svc2/tcp/p80', '10.180.0.2', 'endpoint-SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80'],
    [svc3, 'service-4AT6LBPK-ns3/svc3/tcp/p80', '10.180.0.3', 'endpoint-UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80'],
    [svc4, 'service-LAUZTJTB-ns4/svc4/tcp/p80', '10.180.0.5', 'endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80'],
  ])('names nftables chains HASH-ns/name/proto/port like kube-proxy (%#)', (svc, service, ip, endpoint) => {
    expect(nftServiceChains(svc).service).toBe(service);
    expect(nftEndpointChain(svc, { ip, port: 80 })).toBe(endpoint);
  });

  it.each([
    [2, '0.5000000000'],
    [3, '0.3333333333'],
    [4, '0.2500000000'],
  ])('writes the probability for %i endpoints with ten decimals', (n, p) => {
    expect(probability(n)).toBe(p);
  });
});

describe('renderIptablesRestore', () => {
  const text = renderIptablesRestore(upstream, 'test-node', '192.168.0.2', { clusterCidr: '10.0.0.0/8' });
  const lines = text.split('\n');

  it.each([
    '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000',
    '-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000',
    '-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT',
    '-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK',
    '-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C',
    '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O',
    '-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT',
    '-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C',
    '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS',
    '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT',
    '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ',
    '-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT',
    '-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ',
    '-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK',
    '-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C',
    '-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"',
    '-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ',
    '-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80',
    '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC',
    '-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ',
    '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ',
    '-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ',
    // filter table
    '-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT',
    '-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT',
    '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP',
    '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP',
    '-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP',
    '-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    '-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP',
  ])('writes %s as kube-proxy does', (line) => {
    expect(lines).toContain(line);
  });

  it('writes no KUBE-SVL chain for a Local service without a local endpoint, and one for a service with one', () => {
    expect(text).not.toContain('KUBE-SVL-GNZBNJ2PO5MGZ6GT');
    const local = renderIptablesRestore({ services: [{ ...svc2, endpoints: [ep('10.180.0.2', 'test-node')] }] }, 'test-node', '192.168.0.2');
    expect(local.split('\n')).toContain(':KUBE-SVL-GNZBNJ2PO5MGZ6GT - [0:0]');
    expect(local.split('\n')).toContain('-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -j KUBE-SVL-GNZBNJ2PO5MGZ6GT');
    expect(local).not.toContain('has no local endpoints');
  });

  it('masquerades with --random-fully after clearing the mark, as kube-proxy on an iptables that supports it', () => {
    expect(lines).toContain('-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully');
  });

  it('writes udp matches for a UDP service', () => {
    const udp = renderIptablesRestore({ services: [{ ...svc1, protocol: 'udp', port: 53, endpoints: [{ ...ep('10.180.0.1'), port: 53 }] }] }, 'test-node', '192.168.0.2');
    expect(udp).toMatch(/ -m udp -p udp -j DNAT --to-destination 10\.180\.0\.1:53$/m);
  });

  it('falls back to terminating endpoints only when none is ready', () => {
    const render = (endpoints: EndpointModel[]) => renderIptablesRestore({ services: [{ ...svc1, endpoints }] }, 'test-node', '192.168.0.2');
    const both = render([{ ...ep('10.180.0.1'), ready: false, terminating: true }, ep('10.180.0.9')]);
    expect(both).not.toContain('10.180.0.1:80');
    expect(render([{ ...ep('10.180.0.1'), ready: false, terminating: true }])).toContain('--to-destination 10.180.0.1:80');
  });

  it('deletes stale service chains the node still has, and leaves other chains alone', () => {
    const existing = [
      '*nat', ':PREROUTING ACCEPT [0:0]', ':KUBE-SEP-STALESTALESTALE1 - [0:0]', ':KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]', ':MY-OWN-CHAIN - [0:0]',
      '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES', 'COMMIT',
    ].join('\n');
    const out = renderIptablesRestore({ services: [svc1] }, 'test-node', '192.168.0.2', { existingRules: existing }).split('\n');
    expect(out).toContain(':KUBE-SEP-STALESTALESTALE1 - [0:0]');
    expect(out).toContain('-X KUBE-SEP-STALESTALESTALE1');
    expect(out).not.toContain('-X KUBE-SVC-XPGD46QRK7WJZT7O');
    expect(out.join('\n')).not.toContain('MY-OWN-CHAIN');
    // The jump the node already has is not added twice; a missing one is.
    expect(out).not.toContain('-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES');
    expect(out).toContain('-I OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES');
  });

  it('is one filter and one nat section, each ending in COMMIT', () => {
    expect(lines.filter((l) => l.startsWith('*'))).toEqual(['*filter', '*nat']);
    expect(lines.filter((l) => l === 'COMMIT')).toHaveLength(2);
  });
});

describe('renderNftRuleset', () => {
  const text = renderNftRuleset(upstream, 'test-node', '192.168.0.2', { clusterCidr: '10.0.0.0/8', serviceCidr: '172.30.0.0/16', nodePortAddresses: ['192.168.0.2'] });
  const lines = text.split('\n');

  it.each([
    // baseRules
    'add table ip kube-proxy { comment "rules for kube-proxy" ; }',
    'add set ip kube-proxy cluster-ips { type ipv4_addr ; comment "Active ClusterIPs" ; }',
    'add set ip kube-proxy nodeport-ips { type ipv4_addr ; comment "IPs that accept NodePort traffic" ; }',
    'add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }',
    'add map ip kube-proxy service-nodeports { type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }',
    'add chain ip kube-proxy filter-prerouting-pre-dnat { type filter hook prerouting priority -110 ; }',
    'add chain ip kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }',
    'add chain ip kube-proxy nat-postrouting { type nat hook postrouting priority 100 ; }',
    'add rule ip kube-proxy cluster-ips-check ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"',
    'add rule ip kube-proxy cluster-ips-check ip daddr { 172.30.0.0/16 } drop comment "Drop traffic to unallocated ClusterIPs"',
    'add rule ip kube-proxy mark-for-masquerade mark set mark or 0x4000',
    'add rule ip kube-proxy masquerading mark and 0x4000 == 0 return',
    'add rule ip kube-proxy masquerading mark set mark xor 0x4000',
    'add rule ip kube-proxy masquerading masquerade fully-random',
    'add rule ip kube-proxy services ip daddr . meta l4proto . th dport vmap @service-ips',
    'add rule ip kube-proxy services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports',
    'add element ip kube-proxy nodeport-ips { 192.168.0.2 }',
    // svc1
    'add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 ip daddr 172.30.0.41 ip saddr != 10.0.0.0/8 jump mark-for-masquerade',
    'add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }',
    'add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 ip saddr 10.180.0.1 jump mark-for-masquerade',
    'add rule ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 meta l4proto tcp dnat to 10.180.0.1:80',
    'add element ip kube-proxy cluster-ips { 172.30.0.41 }',
    'add element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }',
    // svc2
    'add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 ip saddr 10.0.0.0/8 goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit pod traffic"',
    'add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"',
    'add rule ip kube-proxy external-42NFTM6N-ns2/svc2/tcp/p80 fib saddr type local goto service-42NFTM6N-ns2/svc2/tcp/p80 comment "short-circuit local traffic"',
    'add element ip kube-proxy service-ips { 1.2.3.4 . tcp . 80 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }',
    'add element ip kube-proxy service-nodeports { tcp . 3001 : goto external-42NFTM6N-ns2/svc2/tcp/p80 }',
    'add element ip kube-proxy no-endpoint-nodeports { tcp . 3001 comment "ns2/svc2:p80" : drop }',
    'add element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 comment "ns2/svc2:p80" : drop }',
    // svc3
    'add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 jump mark-for-masquerade',
    'add rule ip kube-proxy external-4AT6LBPK-ns3/svc3/tcp/p80 goto service-4AT6LBPK-ns3/svc3/tcp/p80',
    'add element ip kube-proxy service-nodeports { tcp . 3003 : goto external-4AT6LBPK-ns3/svc3/tcp/p80 }',
    // svc5
    'add rule ip kube-proxy firewall-HVFWP5L3-ns5/svc5/tcp/p80 ip saddr != { 203.0.113.0/25 } drop',
    'add element ip kube-proxy service-ips { 5.6.7.8 . tcp . 80 : goto external-HVFWP5L3-ns5/svc5/tcp/p80 }',
    'add element ip kube-proxy firewall-ips { 5.6.7.8 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80 }',
    // svc6
    'add element ip kube-proxy no-endpoint-services { 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }',
    // svc4
    'add rule ip kube-proxy service-LAUZTJTB-ns4/svc4/tcp/p80 numgen random mod 2 vmap { 0 : goto endpoint-UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80 , 1 : goto endpoint-5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80 }',
  ])('writes %s as kube-proxy does', (line) => {
    expect(lines).toContain(line);
  });

  it('adds every chain before any rule or map element refers to it (nft -f evaluates in order)', () => {
    const firstUse = (chain: string) => lines.findIndex((l) => !l.startsWith('add chain') && l.includes(`goto ${chain}`));
    for (const [i, line] of lines.entries()) {
      const m = /^add chain ip kube-proxy (\S+)/.exec(line);
      if (m?.[1] && firstUse(m[1]) >= 0) expect(i).toBeLessThan(firstUse(m[1]));
    }
  });
});

describe('renderNftRuleset: chains kube-proxy left behind flushed', () => {
  it('writes a stale endpoint chain as an empty chain, with nothing pointing to it', () => {
    const stale = nftEndpointChain(svc1, { ip: '10.180.0.9', port: 80 });
    const lines = renderNftRuleset({ services: [svc1] }, 'test-node', '192.168.0.2', { staleChains: [stale] }).split('\n');
    expect(lines).toContain(`add chain ip kube-proxy ${stale}`);
    expect(lines.filter((l) => l.includes(stale))).toEqual([`add chain ip kube-proxy ${stale}`]);
  });
});

// --- IPVS mode: pkg/proxy/ipvs/proxier_test.go ------------------------------

interface Jump {
  readonly jump: string;
  readonly matchSet: string;
  readonly source?: string;
}

/** Rules of one chain in both tables (nat first, as the proxier writes them), as proxier_test's checkIptables sees them. */
function jumpsOf(text: string, chain: string): Jump[] {
  const out: Jump[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith(`-A ${chain} `)) continue;
    const jump = / -j (\S+)/.exec(line)?.[1] ?? '';
    const matchSet = / --match-set (\S+)/.exec(line)?.[1] ?? '';
    const source = / -s (\S+)/.exec(line)?.[1];
    out.push({ jump, matchSet, ...(source !== undefined ? { source } : {}) });
  }
  return out;
}

const ipvsSvc = (over: Partial<ServiceModel>): ServiceModel => ({
  namespace: 'ns1', name: 'svc1', portName: 'p80', protocol: 'tcp', clusterIP: '10.20.30.41', port: 80, externalTrafficPolicy: 'Cluster', endpoints: [], ...over,
});
const local = (ip: string): EndpointModel => ep(ip, 'test-node');

describe('IPVS mode against pkg/proxy/ipvs/proxier_test.go', () => {
  it('TestLoadBalancer: the LB address in KUBE-LOAD-BALANCER, KUBE-SERVICES jumping on it, two virtual servers', () => {
    const model = { services: [ipvsSvc({ nodePort: 3001, loadBalancerIP: '1.2.3.4', endpoints: [ep('10.180.0.1')] })] };
    const state = ipvsState(model, 'test-node', '192.168.0.2', { nodeIps: [] });
    expect(state.ipsets.get('KUBE-LOAD-BALANCER')).toEqual(['1.2.3.4,tcp:80']);
    expect(state.virtualServers).toHaveLength(2);
    const rules = renderIpvsIptablesRestore(model, 'test-node', '192.168.0.2', { nodeIps: [] });
    expect(jumpsOf(rules, 'KUBE-SERVICES')).toEqual([
      { jump: 'RETURN', matchSet: '', source: '127.0.0.0/8' },
      { jump: 'KUBE-LOAD-BALANCER', matchSet: 'KUBE-LOAD-BALANCER' },
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-CLUSTER-IP' },
      { jump: 'KUBE-NODE-PORT', matchSet: '' },
      { jump: 'ACCEPT', matchSet: 'KUBE-CLUSTER-IP' },
      { jump: 'ACCEPT', matchSet: 'KUBE-LOAD-BALANCER' },
    ]);
    expect(jumpsOf(rules, 'KUBE-LOAD-BALANCER')).toEqual([{ jump: 'KUBE-MARK-MASQ', matchSet: '' }]);
  });

  it('TestOnlyLocalNodePorts: the NodePort in both bitmap sets, RETURN before KUBE-MARK-MASQ, only the local endpoint behind node:NodePort', () => {
    const model = { services: [ipvsSvc({ nodePort: 3001, externalTrafficPolicy: 'Local', endpoints: [local('10.180.0.1'), ep('10.180.1.1')] })] };
    const state = ipvsState(model, 'test-node', '100.101.102.103');
    expect(state.ipsets.get('KUBE-NODE-PORT-TCP')).toEqual(['3001']);
    expect(state.ipsets.get('KUBE-NODE-PORT-LOCAL-TCP')).toEqual(['3001']);
    expect(state.virtualServers).toHaveLength(2);
    const nodePort = state.virtualServers.find((v) => v.address === '100.101.102.103' && v.port === 3001);
    expect(nodePort?.realServers.map((r) => `${r.address}:${r.port}`)).toEqual(['10.180.0.1:80']);
    const rules = renderIpvsIptablesRestore(model, 'test-node', '100.101.102.103');
    expect(jumpsOf(rules, 'KUBE-SERVICES')).toEqual([
      { jump: 'RETURN', matchSet: '', source: '127.0.0.0/8' },
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-CLUSTER-IP' },
      { jump: 'KUBE-NODE-PORT', matchSet: '' },
      { jump: 'ACCEPT', matchSet: 'KUBE-CLUSTER-IP' },
    ]);
    expect(jumpsOf(rules, 'KUBE-NODE-PORT')).toEqual([
      { jump: 'RETURN', matchSet: 'KUBE-NODE-PORT-LOCAL-TCP' },
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-NODE-PORT-TCP' },
      { jump: 'ACCEPT', matchSet: 'KUBE-HEALTH-CHECK-NODE-PORT' },
    ]);
  });

  it('TestHealthCheckNodePort: only the health-check ports of Local services in KUBE-HEALTH-CHECK-NODE-PORT', () => {
    const base = { nodePort: 3000, externalTrafficPolicy: 'Local' as const };
    const model = {
      services: [
        ipvsSvc({ ...base, name: 'valid-svc1', healthCheckNodePort: 30000 }),
        ipvsSvc({ ...base, name: 'valid-svc2', healthCheckNodePort: 30001 }),
        ipvsSvc({ ...base, name: 'invalid-svc3', externalTrafficPolicy: 'Cluster', healthCheckNodePort: 30002 }),
      ],
    };
    expect(ipvsState(model, 'test-node', '100.101.102.103').ipsets.get('KUBE-HEALTH-CHECK-NODE-PORT')).toEqual(['30000', '30001']);
    expect(jumpsOf(renderIpvsIptablesRestore(model, 'test-node', '100.101.102.103'), 'KUBE-NODE-PORT')).toEqual([
      { jump: 'RETURN', matchSet: 'KUBE-NODE-PORT-LOCAL-TCP' },
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-NODE-PORT-TCP' },
      { jump: 'ACCEPT', matchSet: 'KUBE-HEALTH-CHECK-NODE-PORT' },
    ]);
  });

  it('TestLoadBalancerSourceRanges: the FW and SOURCE-CIDR sets, KUBE-SOURCE-RANGES-FIREWALL returning on them and dropping the rest', () => {
    const model = { services: [ipvsSvc({ loadBalancerIP: '1.2.3.4', loadBalancerSourceRanges: ['10.0.0.0/8'], endpoints: [ep('10.180.0.1')] })] };
    const state = ipvsState(model, 'test-node', '192.168.0.2', { nodeIps: [] });
    expect(state.ipsets.get('KUBE-LOAD-BALANCER')).toEqual(['1.2.3.4,tcp:80']);
    expect(state.ipsets.get('KUBE-LOAD-BALANCER-FW')).toEqual(['1.2.3.4,tcp:80']);
    expect(state.ipsets.get('KUBE-LOAD-BALANCER-SOURCE-CIDR')).toEqual(['1.2.3.4,tcp:80,10.0.0.0/8']);
    const rules = renderIpvsIptablesRestore(model, 'test-node', '192.168.0.2', { nodeIps: [] });
    expect(jumpsOf(rules, 'KUBE-PROXY-FIREWALL')).toEqual([{ jump: 'KUBE-SOURCE-RANGES-FIREWALL', matchSet: 'KUBE-LOAD-BALANCER-FW' }]);
    expect(jumpsOf(rules, 'KUBE-SOURCE-RANGES-FIREWALL')).toEqual([{ jump: 'RETURN', matchSet: 'KUBE-LOAD-BALANCER-SOURCE-CIDR' }, { jump: 'DROP', matchSet: '' }]);
    // The node is outside the ranges: proxier.go keeps it off the LB address with an xt_ipvs rule.
    expect(rules.split('\n')).toContain('-A KUBE-IPVS-OUT-FILTER -s 1.2.3.4 -m ipvs --vaddr 1.2.3.4 --vproto tcp --vport 80 -j DROP');
    // A range that holds the node lets the LB address reach itself instead.
    const inside = ipvsState(model, 'test-node', '10.1.2.3', { nodeIps: [] });
    expect(inside.ipsets.get('KUBE-LOAD-BALANCER-SOURCE-IP')).toEqual(['1.2.3.4,tcp:80,1.2.3.4']);
    expect(inside.lbNoNodeAccess).toEqual([]);
  });

  it('TestOnlyLocalLoadBalancing: LB-LOCAL returns before the masquerade mark, and only the local endpoint serves the LB address', () => {
    const model = { services: [ipvsSvc({ nodePort: 3001, loadBalancerIP: '1.2.3.4', externalTrafficPolicy: 'Local', endpoints: [local('10.180.0.1'), ep('10.180.1.1')] })] };
    const state = ipvsState(model, 'test-node', '192.168.0.2', { nodeIps: [] });
    expect(state.ipsets.get('KUBE-LOAD-BALANCER')).toEqual(['1.2.3.4,tcp:80']);
    expect(state.ipsets.get('KUBE-LOAD-BALANCER-LOCAL')).toEqual(['1.2.3.4,tcp:80']);
    expect(state.virtualServers).toHaveLength(2);
    expect(state.virtualServers.find((v) => v.address === '1.2.3.4')?.realServers.map((r) => `${r.address}:${r.port}`)).toEqual(['10.180.0.1:80']);
    const rules = renderIpvsIptablesRestore(model, 'test-node', '192.168.0.2', { nodeIps: [] });
    expect(jumpsOf(rules, 'KUBE-LOAD-BALANCER')).toEqual([{ jump: 'RETURN', matchSet: 'KUBE-LOAD-BALANCER-LOCAL' }, { jump: 'KUBE-MARK-MASQ', matchSet: '' }]);
  });

  it('TestAcceptIPVSTraffic: external-IP masquerade and ACCEPTs before the NodePort jump, the VIP ACCEPTs last', () => {
    const model = {
      services: [
        ipvsSvc({ clusterIP: '10.20.30.40', externalIPs: ['5.6.7.8'] }),
        ipvsSvc({ name: 'svc2', clusterIP: '10.20.30.41', nodePort: 80, loadBalancerIP: '1.2.3.4' }),
        ipvsSvc({ name: 'svc3', clusterIP: '10.20.30.42', nodePort: 80 }),
      ],
    };
    expect(jumpsOf(renderIpvsIptablesRestore(model, 'test-node', '192.168.0.2'), 'KUBE-SERVICES')).toEqual([
      { jump: 'RETURN', matchSet: '', source: '127.0.0.0/8' },
      { jump: 'KUBE-LOAD-BALANCER', matchSet: 'KUBE-LOAD-BALANCER' },
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-CLUSTER-IP' },
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-EXTERNAL-IP' },
      { jump: 'ACCEPT', matchSet: 'KUBE-EXTERNAL-IP' },
      { jump: 'ACCEPT', matchSet: 'KUBE-EXTERNAL-IP' },
      { jump: 'KUBE-NODE-PORT', matchSet: '' },
      { jump: 'ACCEPT', matchSet: 'KUBE-CLUSTER-IP' },
      { jump: 'ACCEPT', matchSet: 'KUBE-LOAD-BALANCER' },
    ]);
  });

  it('TestOnlyLocalExternalIPs: three virtual servers, the external IP served by the local endpoint only', () => {
    const model = { services: [ipvsSvc({ externalIPs: ['50.60.70.81', '127.0.0.1'], externalTrafficPolicy: 'Local', endpoints: [local('10.180.0.1'), ep('10.180.1.1')] })] };
    const state = ipvsState(model, 'test-node', '192.168.0.2');
    expect(state.virtualServers).toHaveLength(3);
    expect(state.virtualServers.find((v) => v.address === '50.60.70.81')?.realServers.map((r) => r.address)).toEqual(['10.180.0.1']);
    expect(state.ipsets.get('KUBE-EXTERNAL-IP-LOCAL')).toEqual(['127.0.0.1,tcp:80', '50.60.70.81,tcp:80']);
  });

  it('TestNodePortIPv4 "1 UDP service with node port, has endpoints": the IPVS state, the UDP bitmap set and the jumps', () => {
    const model = { services: [ipvsSvc({ protocol: 'udp', nodePort: 3001, endpoints: [ep('10.180.0.1')] })] };
    const state = ipvsState(model, 'test-node', '100.101.102.103');
    expect(state.virtualServers.map((v) => ({ vs: `${v.protocol} ${v.address}:${v.port} ${v.scheduler}`, rs: v.realServers.map((r) => `${r.address}:${r.port} w${r.weight}`) }))).toEqual([
      { vs: 'UDP 10.20.30.41:80 rr', rs: ['10.180.0.1:80 w1'] },
      { vs: 'UDP 100.101.102.103:3001 rr', rs: ['10.180.0.1:80 w1'] },
    ]);
    expect(state.ipsets.get('KUBE-NODE-PORT-UDP')).toEqual(['3001']);
    const rules = renderIpvsIptablesRestore(model, 'test-node', '100.101.102.103');
    expect(jumpsOf(rules, 'KUBE-NODE-PORT')).toEqual([
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-NODE-PORT-UDP' },
      { jump: 'ACCEPT', matchSet: 'KUBE-HEALTH-CHECK-NODE-PORT' },
    ]);
    expect(jumpsOf(rules, 'KUBE-SERVICES')).toEqual([
      { jump: 'RETURN', matchSet: '', source: '127.0.0.0/8' },
      { jump: 'KUBE-MARK-MASQ', matchSet: 'KUBE-CLUSTER-IP' },
      { jump: 'KUBE-NODE-PORT', matchSet: '' },
      { jump: 'ACCEPT', matchSet: 'KUBE-CLUSTER-IP' },
    ]);
  });

  it('TestNodePortIPv4 "service has node port but no endpoints": both virtual servers, no real server', () => {
    const state = ipvsState({ services: [ipvsSvc({ nodePort: 3001 })] }, 'test-node', '100.101.102.103');
    expect(state.virtualServers.map((v) => [`${v.address}:${v.port}`, v.realServers.length])).toEqual([['10.20.30.41:80', 0], ['100.101.102.103:3001', 0]]);
  });
});

describe('IPVS mode: the text pkg/proxy/ipvs/proxier.go writes', () => {
  // Seed 003's Service on the node that runs its only endpoint.
  const seed: ServiceModel = {
    namespace: 'hc', name: 'web', portName: 'http', protocol: 'tcp', clusterIP: '198.18.64.20', port: 80, nodePort: 31199, loadBalancerIP: '198.18.100.20',
    externalTrafficPolicy: 'Local', healthCheckNodePort: 32000, endpoints: [{ ip: '198.19.1.10', port: 8080, nodeName: 'node-1', ready: true }],
  };
  const model = { services: [seed] };
  const rules = renderIpvsIptablesRestore(model, 'node-1', '198.18.0.11').split('\n');

  it.each([
    // nat, in writeIptablesRules order
    '-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN',
    '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE',
    '-A KUBE-SERVICES -m comment --comment "Kubernetes service lb portal" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER',
    '-A KUBE-LOAD-BALANCER -m comment --comment "Kubernetes service load balancer ip + port with externalTrafficPolicy=local" -m set --match-set KUBE-LOAD-BALANCER-LOCAL dst,dst -j RETURN',
    '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN',
    '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ',
    '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP src,dst -j KUBE-MARK-MASQ',
    '-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT',
    '-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ',
    '-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT',
    '-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT',
    '-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN',
    '-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000',
    '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    '-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000',
    // filter
    '-A KUBE-SOURCE-RANGES-FIREWALL -j DROP',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x00004000/0x00004000 -j ACCEPT',
    '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT',
    '-A KUBE-NODE-PORT -m comment --comment "Kubernetes health check node port" -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j ACCEPT',
    '-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN',
    '-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN',
    '-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP dst,dst -j RETURN',
    '-A KUBE-IPVS-FILTER -m set --match-set KUBE-EXTERNAL-IP-LOCAL dst,dst -j RETURN',
    '-A KUBE-IPVS-FILTER -m set --match-set KUBE-HEALTH-CHECK-NODE-PORT dst -j RETURN',
    '-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT',
    // jumps ensured from the built-in chains
    '-I PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-I POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    '-I INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT',
    '-I INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER',
    '-I OUTPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-OUT-FILTER',
  ])('writes %s', (line) => {
    expect(rules).toContain(line);
  });

  it('writes nat then filter, declaring every chain of iptablesChains, and no iptables-mode service chain', () => {
    expect(rules.filter((l) => l.startsWith('*'))).toEqual(['*nat', '*filter']);
    expect(rules.filter((l) => l.startsWith(':'))).toEqual([
      ':KUBE-SERVICES - [0:0]', ':KUBE-POSTROUTING - [0:0]', ':KUBE-NODE-PORT - [0:0]', ':KUBE-LOAD-BALANCER - [0:0]', ':KUBE-MARK-MASQ - [0:0]',
      ':KUBE-FORWARD - [0:0]', ':KUBE-NODE-PORT - [0:0]', ':KUBE-PROXY-FIREWALL - [0:0]', ':KUBE-SOURCE-RANGES-FIREWALL - [0:0]', ':KUBE-IPVS-FILTER - [0:0]', ':KUBE-IPVS-OUT-FILTER - [0:0]',
    ]);
    expect(rules.join('\n')).not.toMatch(/KUBE-(SVC|SEP|EXT|SVL|FW)-|KUBE-NODEPORTS/);
  });

  it('matches the cluster IPs dst,dst with the local-traffic detector, and marks everything with masqueradeAll', () => {
    const withCidr = renderIpvsIptablesRestore(model, 'node-1', '198.18.0.11', { clusterCidr: '198.19.0.0/16' }).split('\n');
    expect(withCidr).toContain('-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 198.19.0.0/16 -j KUBE-MARK-MASQ');
    const all = renderIpvsIptablesRestore(model, 'node-1', '198.18.0.11', { masqueradeAll: true }).split('\n');
    expect(all).toContain('-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ');
  });

  it('writes the external-IP rules with the physdev and addrtype matches', () => {
    const text = renderIpvsIptablesRestore({ services: [{ ...seed, externalIPs: ['198.18.100.30'], externalTrafficPolicy: 'Cluster' }] }, 'node-1', '198.18.0.11').split('\n');
    const args = '-A KUBE-SERVICES -m comment --comment "Kubernetes service external ip + port for masquerade and filter purpose" -m set --match-set KUBE-EXTERNAL-IP dst,dst';
    expect(text).toContain(`${args} -j KUBE-MARK-MASQ`);
    expect(text).toContain(`${args} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT`);
    expect(text).toContain(`${args} -m addrtype --dst-type LOCAL -j ACCEPT`);
  });

  it('does not add a jump the node already has', () => {
    const existing = ['*filter', ':INPUT ACCEPT [0:0]', '-A INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT', 'COMMIT'].join('\n');
    const text = renderIpvsIptablesRestore(model, 'node-1', '198.18.0.11', { existingRules: existing }).split('\n');
    expect(text).not.toContain('-I INPUT -m comment --comment "kubernetes health check rules" -j KUBE-NODE-PORT');
    expect(text).toContain('-I INPUT -m comment --comment "kubernetes ipvs access filter" -j KUBE-IPVS-FILTER');
  });

  it('binds the ClusterIP and the LB address on kube-ipvs0 and puts them in KUBE-IPVS-IPS; the NodePort is not bound', () => {
    const state = ipvsState(model, 'node-1', '198.18.0.11');
    expect(state.boundAddresses).toEqual(['198.18.64.20', '198.18.100.20']);
    expect(state.ipsets.get('KUBE-IPVS-IPS')).toEqual(['198.18.100.20', '198.18.64.20']);
    expect(state.ipsets.get('KUBE-LOOP-BACK')).toEqual(['198.19.1.10,tcp:8080,198.19.1.10']);
    // An LB address that is one of the node's own is not bound again.
    expect(ipvsState(model, 'node-1', '198.18.0.11', { nodeIps: ['198.18.0.11', '198.18.100.20'] }).boundAddresses).toEqual(['198.18.64.20']);
  });
});

describe('renderIpsetRestore', () => {
  const model = { services: [ipvsSvc({ nodePort: 3001, loadBalancerIP: '1.2.3.4', externalTrafficPolicy: 'Local', healthCheckNodePort: 30000, endpoints: [local('10.180.0.1')] })] };

  it('creates every set of ipsetInfo as ipset.go createSet does, then adds the members', () => {
    const lines = renderIpsetRestore(model, 'test-node', '100.101.102.103').trim().split('\n');
    expect(lines.filter((l) => l.startsWith('create ')).map((l) => l.split(' ')[1])).toEqual(IPVS_IPSETS.map((s) => s.name));
    expect(lines).toContain('create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536');
    expect(lines).toContain('create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536');
    expect(lines).toContain('create KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net family inet hashsize 1024 maxelem 65536');
    expect(lines).toContain('create KUBE-NODE-PORT-TCP bitmap:port range 0-65535');
    expect(lines).toContain('create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536');
    for (const add of [
      'add KUBE-CLUSTER-IP 10.20.30.41,tcp:80',
      'add KUBE-LOAD-BALANCER 1.2.3.4,tcp:80',
      'add KUBE-LOAD-BALANCER-LOCAL 1.2.3.4,tcp:80',
      'add KUBE-NODE-PORT-TCP 3001',
      'add KUBE-NODE-PORT-LOCAL-TCP 3001',
      'add KUBE-HEALTH-CHECK-NODE-PORT 30000',
      'add KUBE-LOOP-BACK 10.180.0.1,tcp:80,10.180.0.1',
      'add KUBE-IPVS-IPS 10.20.30.41',
      'add KUBE-IPVS-IPS 1.2.3.4',
    ]) expect(lines).toContain(add);
  });

  it('deletes members that are no longer active and does not add the ones already there (syncIPSetEntries)', () => {
    const existing = [
      'create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1',
      'add KUBE-CLUSTER-IP 10.20.30.41,tcp:80',
      'add KUBE-CLUSTER-IP 10.20.30.99,tcp:80',
      'create SOMEONE-ELSES hash:ip family inet hashsize 1024 maxelem 65536',
      'add SOMEONE-ELSES 1.1.1.1',
    ].join('\n');
    const lines = renderIpsetRestore(model, 'test-node', '100.101.102.103', { existingIpsets: existing }).split('\n');
    expect(lines).toContain('del KUBE-CLUSTER-IP 10.20.30.99,tcp:80');
    expect(lines).not.toContain('add KUBE-CLUSTER-IP 10.20.30.41,tcp:80');
    expect(lines.join('\n')).not.toContain('SOMEONE-ELSES');
  });
});

describe('renderIpvsadmList', () => {
  it('prints ipvsadm -Ln as ipvsadm 1.31 does: version, title, services sorted by protocol, address and port, padded real servers', () => {
    const model = { services: [ipvsSvc({ protocol: 'udp', nodePort: 3001, endpoints: [ep('10.180.0.1')] })] };
    expect(renderIpvsadmList(model, 'test-node', '100.101.102.103')).toBe(
      [
        'IP Virtual Server version 1.2.1 (size=4096)',
        'Prot LocalAddress:Port Scheduler Flags',
        '  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn',
        'UDP  10.20.30.41:80 rr',
        '  -> 10.180.0.1:80                Masq    1      0          0         ',
        'UDP  100.101.102.103:3001 rr',
        '  -> 10.180.0.1:80                Masq    1      0          0         ',
        '',
      ].join('\n'),
    );
  });

  it('keeps a terminating endpoint that ready ones replaced with weight 0, and lists TCP before UDP', () => {
    const model = {
      services: [
        ipvsSvc({ protocol: 'udp', clusterIP: '10.20.30.10', port: 53, endpoints: [{ ...ep('10.180.0.9'), port: 53 }] }),
        ipvsSvc({ endpoints: [ep('10.180.0.2'), { ...ep('10.180.0.1'), ready: false, terminating: true }] }),
      ],
    };
    const text = renderIpvsadmList(model, 'test-node', '100.101.102.103', { connections: { 'TCP 10.20.30.41:80 -> 10.180.0.1:80': { active: 10, inactive: 14048 } } });
    expect(text.split('\n').slice(3)).toEqual([
      'TCP  10.20.30.41:80 rr',
      '  -> 10.180.0.1:80                Masq    0      10         14048     ',
      '  -> 10.180.0.2:80                Masq    1      0          0         ',
      'UDP  10.20.30.10:53 rr',
      '  -> 10.180.0.9:53                Masq    1      0          0         ',
      '',
    ]);
  });
});
