import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseIptables } from '../../../agent/sources/iptables.ts';
import { parseIpvs } from '../../../agent/sources/ipvs.ts';
import { parseNft } from '../../../agent/sources/nft.ts';
import { programmedServices } from '../../../collector/detection/services.ts';

const fixture = (p: string) => readFileSync(new URL(`../../fixtures/${p}`, import.meta.url), 'utf8');

describe('programmedServices', () => {
  it("reads seed 000's grepped kube-proxy rules: ClusterIP, NodePort and the three DNAT endpoints of an unnamed port", () => {
    const services = programmedServices({ iptables: parseIptables(fixture('iptables-save/seed-000-grep-service-nginx-demo.txt')).records });
    expect(services).toHaveLength(1);
    expect(services[0]).toMatchObject({
      id: 'nginx-demo/service-nginx-demo',
      frontends: [{ address: '10.100.135.233', port: 80, kind: 'cluster' }],
      nodePorts: [30161],
      localTrafficPolicy: false,
    });
    expect(services[0]?.endpoints.map((e) => `${e.address}:${e.port}`).sort()).toEqual(['192.168.21.160:80', '192.168.44.248:80', '192.168.73.88:80']);
    expect(services[0]?.endpoints[0]?.raw).toMatch(/^-A KUBE-SEP-\w+ -p tcp .* -j DNAT --to-destination /);
  });

  it("reads the 7 endpoints of `default/hello:` from a full 2018 EKS dump", () => {
    const services = programmedServices({ iptables: parseIptables(fixture('iptables-save/eks-2018-reinvent-pod2service-full-v1.4.21.txt')).records });
    expect(services.find((s) => s.id === 'default/hello:')?.endpoints).toHaveLength(7);
  });

  it('reads kube-proxy nftables maps: the ClusterIP and NodePort elements and one endpoint per endpoint chain', () => {
    const services = programmedServices({ nft: parseNft(fixture('nft/lab-kube-proxy-ruleset.json')).records });
    const web = services.find((s) => s.id === 'demo/web:http');
    expect(web).toMatchObject({ protocol: 'tcp', frontends: [{ address: '10.96.100.10', port: 80 }], nodePorts: [30080] });
    expect(web?.endpoints.map((e) => `${e.address}:${e.port}`).sort()).toEqual(['10.244.1.5:8080', '10.244.2.7:8080']);
  });

  it('marks an IPVS real server with weight 0 as terminating (kubernetes#81775)', () => {
    const services = programmedServices({ ipvs: parseIpvs(fixture('ipvsadm-ln/k8s-81775-weight0-terminating-inactconn.txt')).records });
    expect(services).toEqual([
      expect.objectContaining({
        id: 'TCP 172.16.255.241:80',
        endpoints: [expect.objectContaining({ address: '172.16.8.106', port: 80, terminating: true }), expect.objectContaining({ address: '172.16.8.107', port: 80, terminating: false })],
      }),
    ]);
  });
});
