// Typed records, one family per source. Every record keeps `raw`: the text
// exactly as the tool printed it, so a finding can quote it verbatim.
// Addresses are canonical: IPv4 dotted quad, IPv6 compressed lower-case
// without brackets (conntrack procfs prints full IPv6, conntrack -L prints it
// compressed, ipvsadm brackets it; all three must compare equal).
import { array, bool, int, literal, nullable, num, object, record, str, type Infer } from './schema.ts';

const raw = str;

// ---- conntrack: /proc/net/nf_conntrack, conntrack -L [-o extended] -------
export const conntrackTuple = object({
  src: str,
  dst: str,
  /** null for protocols without ports (icmp, gre). */
  sport: nullable(int),
  dport: nullable(int),
  /** The non-port identity, verbatim: `type=8 code=0 id=3` or `srckey=0x0 dstkey=0x0`. */
  extra: nullable(str),
});
export type ConntrackTuple = Infer<typeof conntrackTuple>;

export const conntrackEntry = object({
  family: literal('ipv4', 'ipv6'),
  proto: str,
  protoNum: int,
  /** Seconds left; null when the kernel omits it (offloaded flows). */
  timeout: nullable(int),
  /** TCP/SCTP/DCCP state; null for stateless protocols and offloaded flows. */
  state: nullable(str),
  orig: conntrackTuple,
  reply: conntrackTuple,
  unreplied: bool,
  assured: bool,
  offload: literal('none', 'sw', 'hw'),
  mark: nullable(int),
  zone: int,
  raw,
});
export type ConntrackEntry = Infer<typeof conntrackEntry>;

// ---- IPVS: ipvsadm -Ln, -Ln --stats, -Ln --rate ---------------------------
/**
 * `--stats`: totals since the service or destination was added (or zeroed with
 * -Z). ipvsadm prints values of 1e8 and more as K/M/G/T (print_largenum()),
 * dividing and dropping the rest, so such a value is a lower bound: 1200K is
 * 1200000 to 1200999.
 */
export const ipvsStats = object({ conns: num, inPkts: num, outPkts: num, inBytes: num, outBytes: num });
/** `--rate`: the kernel's per-second estimates (connections, packets, bytes), K/M/G/T as in ipvsStats. */
export const ipvsRate = object({ cps: num, inPPS: num, outPPS: num, inBPS: num, outBPS: num });
export type IpvsStats = Infer<typeof ipvsStats>;
export type IpvsRate = Infer<typeof ipvsRate>;

export const ipvsService = object({
  kind: literal('service'),
  proto: literal('TCP', 'UDP', 'SCTP', 'FWM'),
  /** null when the address is unusable (a resolved name truncated by ipvsadm). */
  address: nullable(str),
  port: nullable(int),
  fwmark: nullable(int),
  /** null in the --stats and --rate listings, which print counters in its place. */
  scheduler: nullable(str),
  flags: array(str),
  persistentSeconds: nullable(int),
  /** Set from a --stats listing only. */
  stats: nullable(ipvsStats),
  /** Set from a --rate listing only. */
  rate: nullable(ipvsRate),
  raw,
});
export const ipvsDestination = object({
  kind: literal('destination'),
  /** `${proto} ${address}:${port}` of the virtual server it belongs to (see ipvsServiceKey). */
  service: str,
  address: nullable(str),
  port: nullable(int),
  /** forward, weight and the connection counts are null in the --stats and --rate listings. */
  forward: nullable(str),
  weight: nullable(int),
  activeConn: nullable(int),
  inactConn: nullable(int),
  stats: nullable(ipvsStats),
  rate: nullable(ipvsRate),
  raw,
});
export type IpvsService = Infer<typeof ipvsService>;
export type IpvsDestination = Infer<typeof ipvsDestination>;
export type IpvsRecord = IpvsService | IpvsDestination;

// ---- IPVS connections: ipvsadm -Lnc, /proc/net/ip_vs_conn -----------------
export const ipvsEndpoint = object({ address: str, port: int });
export const ipvsConnection = object({
  proto: str,
  client: ipvsEndpoint,
  virtual: ipvsEndpoint,
  destination: ipvsEndpoint,
  state: str,
  expiresSeconds: int,
  /** A persistence template (client port 0). */
  template: bool,
  raw,
});
export type IpvsConnection = Infer<typeof ipvsConnection>;

// ---- ipset save: the sets kube-proxy's IPVS mode classifies traffic with ----
export const ipsetSet = object({
  kind: literal('set'),
  name: str,
  /** As ipset names it: `hash:ip,port`, `hash:ip,port,ip`, `bitmap:port`, `hash:net` … */
  type: str,
  /** null for types without a family (bitmap:port, list:set). */
  family: nullable(literal('inet', 'inet6')),
  /** Create options with a value, family excepted: `hashsize` → `1024`, `range` → `0-65535`, `timeout` → `600`. */
  options: record(str),
  /** Create options without a value: `counters`, `comment`, `skbinfo`, `forceadd`. */
  flags: array(str),
  raw,
});
export const ipsetMember = object({
  kind: literal('member'),
  /** Name of the set it belongs to. */
  set: str,
  /** The element exactly as ipset printed it: `10.96.0.10,udp:53`, `30080`, `10.0.0.0/24`. */
  member: str,
  /** The first address or net of the element, canonical (`/len` kept when ipset printed one); null for port-only types. */
  address: nullable(str),
  /** tcp, udp or sctp as kube-proxy writes them; ipset's name for others (icmp, gre); null when the element has no protocol. */
  protocol: nullable(str),
  /** null for port-less elements and for icmp type/code. */
  port: nullable(int),
  /** The next address or net: the source of `hash:ip,port,ip`, the net of `hash:ip,port,net`. */
  second: nullable(str),
  /** An exception inside a net set: matching addresses are not in the set. */
  nomatch: bool,
  comment: nullable(str),
  /** Seconds left for sets created with `timeout` (0: permanent); it counts down, so it is not state. */
  timeout: nullable(int),
  packets: nullable(num),
  bytes: nullable(num),
  raw,
});
export type IpsetSet = Infer<typeof ipsetSet>;
export type IpsetMember = Infer<typeof ipsetMember>;
export type IpsetRecord = IpsetSet | IpsetMember;

// ---- iptables-save -c, and kube-proxy's iptables-restore dialect ---------
export const iptablesChain = object({
  kind: literal('chain'),
  backend: nullable(literal('legacy', 'nft')),
  /** ipv4 from iptables-save, ipv6 from ip6tables-save (kube-proxy writes both in a dual-stack cluster). */
  family: literal('ipv4', 'ipv6'),
  table: str,
  chain: str,
  /** ACCEPT/DROP for builtin chains, null for user chains. */
  policy: nullable(str),
  packets: nullable(num),
  bytes: nullable(num),
  raw,
});
export const iptablesRule = object({
  kind: literal('rule'),
  backend: nullable(literal('legacy', 'nft')),
  family: literal('ipv4', 'ipv6'),
  table: str,
  chain: str,
  /** 1-based position in its chain. */
  position: int,
  /** The rule without its counters: what identifies it. */
  spec: str,
  /** 1 for the first rule with this spec in its chain, 2 for an exact duplicate, and so on. */
  occurrence: int,
  packets: nullable(num),
  bytes: nullable(num),
  /** Tokens of the rule after `-A CHAIN`, quotes removed. */
  args: array(str),
  protocol: nullable(str),
  source: nullable(str),
  destination: nullable(str),
  dport: nullable(str),
  comment: nullable(str),
  /** `-j`/`-g` target; null for a counting rule without a jump. */
  target: nullable(str),
  goto: bool,
  /** `--to-destination` of a DNAT target. */
  toDestination: nullable(str),
  probability: nullable(num),
  raw,
});
export type IptablesChain = Infer<typeof iptablesChain>;
export type IptablesRule = Infer<typeof iptablesRule>;
export type IptablesRecord = IptablesChain | IptablesRule;

// ---- nftables: nft -j list ruleset --------------------------------------
export const nftObject = object({
  kind: literal('table', 'chain', 'rule', 'set', 'map', 'element'),
  family: str,
  table: str,
  /** chain name for chains and rules, set/map name for sets, maps and elements. */
  name: nullable(str),
  handle: nullable(int),
  /** Human text: the rule's comment, or a rendering of the element (`10.96.0.10 . udp . 53 : goto service-X`). */
  text: str,
  packets: nullable(num),
  bytes: nullable(num),
  /** The JSON object as nft printed it (compact), or the element rendering. */
  raw,
});
export type NftObject = Infer<typeof nftObject>;

// ---- ip route show table all / ip -6 route show table all ----------------
export const route = object({
  family: literal('inet', 'inet6'),
  table: str,
  type: str,
  dst: str,
  via: nullable(str),
  dev: nullable(str),
  proto: nullable(str),
  scope: nullable(str),
  src: nullable(str),
  metric: nullable(int),
  flags: array(str),
  raw,
});
export type Route = Infer<typeof route>;

// ---- ip addr / ip -o addr --------------------------------------------------
export const address = object({
  ifindex: nullable(int),
  ifname: str,
  family: literal('inet', 'inet6'),
  address: str,
  prefixLen: int,
  broadcast: nullable(str),
  scope: nullable(str),
  flags: array(str),
  raw,
});
export type Address = Infer<typeof address>;

// ---- ip link / ip -o link --------------------------------------------------
export const link = object({
  ifindex: nullable(int),
  ifname: str,
  flags: array(str),
  mtu: nullable(int),
  qdisc: nullable(str),
  operState: nullable(str),
  linkType: nullable(str),
  mac: nullable(str),
  raw,
});
export type Link = Infer<typeof link>;

// ---- ip rule ---------------------------------------------------------------
export const routingRule = object({
  family: literal('inet', 'inet6'),
  priority: int,
  not: bool,
  from: str,
  to: nullable(str),
  fwmark: nullable(str),
  iif: nullable(str),
  oif: nullable(str),
  table: nullable(str),
  action: nullable(str),
  raw,
});
export type RoutingRule = Infer<typeof routingRule>;

// ---- /proc/sys ---------------------------------------------------------------
export const sysctl = object({
  /** dotted name as sysctl prints it: net.ipv4.vs.conn_reuse_mode */
  name: str,
  value: str,
  raw,
});
export type Sysctl = Infer<typeof sysctl>;

// ---- /proc/net/stat/*, conntrack -S ---------------------------------------
export const statRow = object({
  /** CPU index (row position for /proc, `cpu=` for conntrack -S). */
  cpu: int,
  counters: record(num),
  raw,
});
export type StatRow = Infer<typeof statRow>;

// ---- /dev/kmsg -----------------------------------------------------------------
/**
 * A kernel log record saying the routing decision dropped a packet as a
 * martian (net/ipv4/route.c: `martian source %pI4 from %pI4, on dev %s`,
 * `martian destination %pI4 from %pI4, dev %s`; logged only where
 * log_martians=1, rate limited). `dst` is the destination after DNAT.
 */
export const kmsgMartian = object({
  /** The kernel's record sequence number: unique per boot, rising. */
  seq: int,
  /** Microseconds since boot (CLOCK_MONOTONIC) when the kernel logged it. */
  usec: int,
  /** Syslog level (0-7) and facility, from the record's `prio` field. */
  level: int,
  facility: int,
  kind: literal('martian-source', 'martian-destination'),
  dst: str,
  src: str,
  dev: str,
  /** The link-layer header the kernel logs in the record after it (`ll header: 00000000: …`), hex as printed; null when absent. */
  llHeader: nullable(str),
  raw,
});
export type KmsgMartian = Infer<typeof kmsgMartian>;

// ---- node facts (systeminformation) ---------------------------------------
export const nodeFacts = object({
  hostname: str,
  kernel: str,
  os: str,
  arch: str,
  cpus: int,
  memoryBytes: num,
  interfaces: array(object({ name: str, ip4: str, ip6: str, mac: str, operstate: str })),
});
export type NodeFacts = Infer<typeof nodeFacts>;
