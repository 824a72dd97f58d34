// Every external command conntrail runs on a node, and why. The container
// image must install each of them (test/deploy/dockerfile.test.ts checks the
// Dockerfile against this list, and this list against the call sites).
export interface NodeCommand {
  readonly name: string;
  readonly why: string;
}

export const NODE_COMMANDS: readonly NodeCommand[] = [
  { name: 'iptables-nft-save', why: 'kube-proxy iptables rules on the nft backend' },
  { name: 'iptables-legacy-save', why: 'kube-proxy iptables rules on the legacy backend' },
  { name: 'iptables-save', why: 'iptables rules where the backend-specific names are missing' },
  { name: 'ip6tables-nft-save', why: 'kube-proxy ip6tables rules (dual-stack and IPv6 clusters) on the nft backend' },
  { name: 'ip6tables-legacy-save', why: 'kube-proxy ip6tables rules on the legacy backend' },
  { name: 'ip6tables-save', why: 'ip6tables rules where the backend-specific names are missing' },
  { name: 'nft', why: "kube-proxy's nftables mode" },
  { name: 'ipvsadm', why: 'IPVS virtual servers and the connection table' },
  { name: 'ipset', why: "the sets kube-proxy's IPVS mode classifies traffic with (KUBE-CLUSTER-IP, KUBE-LOAD-BALANCER-LOCAL …)" },
  { name: 'conntrack', why: 'conntrack -L where /proc/net/nf_conntrack is absent, conntrack -E during a capture' },
  { name: 'ip', why: 'routes (all tables), addresses, links and rules' },
  { name: 'tcpdump', why: "capture of an incident's packets" },
];
