// The renderers against kube-proxy's own expectations: every expected line
// below is copied from kubernetes/kubernetes test files
// (pkg/proxy/iptables/cleanup_test.go TestCleanupLeftovers initial state,
// pkg/proxy/nftables/proxier_test.go baseRules and TestOverallNFTablesRules)
// or from the seeds' iptables-save output, never from our own output.
import { describe, expect, it } from 'vitest';
import {
  iptablesEndpointChain,
  iptablesServiceChains,
  nftEndpointChain,
  nftServiceChains,
  probability,
  renderIptablesRestore,
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
