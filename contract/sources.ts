// The catalogue of sources: for each, the record schema, what identifies a
// record (keyOf) and what counts as a change of state (sameState). Agent and
// collector both take identity from here, so a diff means the same thing on
// both ends of the wire.
import * as R from './records.ts';
import { int, object, str, tagged, type Schema } from './schema.ts';

/** A line a parser could not read. `line` is 1-based in the text it was given. */
export interface Problem {
  readonly line: number;
  readonly text: string;
  readonly reason: string;
}
export const problem = object({ line: int, text: str, reason: str });

export interface ParseResult<T> {
  readonly records: readonly T[];
  readonly problems: readonly Problem[];
}

export interface SourceSpec<T> {
  readonly schema: Schema<T>;
  keyOf(record: T): string;
  /** False when a record with the same key changed in a way a detector cares about. */
  sameState(prev: T, next: T): boolean;
  /**
   * True when a record kept its state but its volatile part moved in a way worth
   * sending (a conntrack timer re-armed by traffic, an iptables counter rising).
   * Timers counting down are not sent: that would be every entry every second.
   */
  refreshed?(prev: T, next: T): boolean;
}

const tupleKey = (t: R.ConntrackTuple): string => `${t.src}|${t.sport ?? ''}|${t.dst}|${t.dport ?? ''}|${t.extra ?? ''}`;
const sameTuple = (a: R.ConntrackTuple, b: R.ConntrackTuple): boolean =>
  a.src === b.src && a.dst === b.dst && a.sport === b.sport && a.dport === b.dport && a.extra === b.extra;
const timerRearmed = (prev: number | null, next: number | null): boolean => prev !== null && next !== null && next > prev;

/**
 * A conntrack timer re-armed by a packet means traffic still flows on that
 * tuple: this is how a stale NAT entry to a removed pod shows itself (the
 * client keeps sending). Timers print whole seconds and nodes are sampled
 * about once a second, so one pair of samples cannot tell a timer held at its
 * maximum by a client sending every 200 ms (120, 119, 120, 119 …) from one
 * counting down. It is measured against a reference instead (the timer and
 * the time the entry was last reported): an idle timer loses as many seconds
 * as have passed; a re-armed one loses at least 2 fewer. Healthy ESTABLISHED
 * TCP flows re-arm their 5-day timer with every packet and are left out, or
 * every busy flow would be sent every other second. This is the one
 * definition: the agent's cache reports `refreshed` by it, and detectors take
 * a `refreshed` conntrack transition to mean exactly this.
 */
export function conntrackRearmedSince(refTimeout: number | null, refTime: number, timeout: number | null, now: number, establishedTcp: boolean): boolean {
  if (refTimeout === null || timeout === null || establishedTcp) return false;
  const elapsed = (now - refTime) / 1000;
  return elapsed - (refTimeout - timeout) >= 2;
}

/** The same rule for two records a sample interval apart, when no reference time is kept (records diffed whole). */
export function conntrackTimerRearmed(prev: number | null, next: number | null, entry: { proto: string; state: string | null }, elapsedMs = 1_000): boolean {
  return conntrackRearmedSince(prev, 0, next, elapsedMs, entry.proto === 'tcp' && entry.state === 'ESTABLISHED');
}

const countersMoved = (p: { packets: number | null; bytes: number | null }, n: { packets: number | null; bytes: number | null }) =>
  p.packets !== n.packets || p.bytes !== n.bytes;
const sameJson = (a: unknown, b: unknown): boolean => JSON.stringify(a) === JSON.stringify(b);

export const ipvsServiceKey = (proto: string, address: string | null, port: number | null, fwmark: number | null): string =>
  proto === 'FWM' ? `FWM ${fwmark ?? '?'}` : `${proto} ${address ?? '?'}:${port ?? '?'}`;

const conntrack: SourceSpec<R.ConntrackEntry> = {
  schema: R.conntrackEntry,
  // Identity is the original tuple and zone: a reused tuple going from
  // TIME_WAIT to SYN_SENT is the same entry changing state (seed 002).
  keyOf: (e) => `${e.zone}|${e.proto}|${tupleKey(e.orig)}`,
  sameState: (a, b) =>
    a.state === b.state &&
    a.unreplied === b.unreplied &&
    a.assured === b.assured &&
    a.offload === b.offload &&
    a.mark === b.mark &&
    sameTuple(a.reply, b.reply),
  refreshed: (a, b) => conntrackTimerRearmed(a.timeout, b.timeout, b),
};

const ipvsRecord = tagged('kind', { service: R.ipvsService, destination: R.ipvsDestination });
const ipvs: SourceSpec<R.IpvsRecord> = {
  schema: ipvsRecord,
  keyOf: (r) =>
    r.kind === 'service'
      ? `service ${ipvsServiceKey(r.proto, r.address, r.port, r.fwmark)}`
      : `destination ${r.service} -> ${r.address ?? '?'}:${r.port ?? '?'}`,
  sameState: (a, b) => {
    if (a.kind === 'service' && b.kind === 'service')
      return a.scheduler === b.scheduler && a.persistentSeconds === b.persistentSeconds && sameJson(a.flags, b.flags);
    if (a.kind === 'destination' && b.kind === 'destination')
      return a.forward === b.forward && a.weight === b.weight;
    return false;
  },
  // Connection counts matter for draining (weight 0 with InActConn, k8s#81775)
  // but are not a change of configuration; nor are traffic counters (--stats, --rate).
  refreshed: (a, b) =>
    (a.kind === 'destination' && b.kind === 'destination' && (a.activeConn !== b.activeConn || a.inactConn !== b.inactConn)) ||
    (a.kind === b.kind && (!sameJson(a.stats, b.stats) || !sameJson(a.rate, b.rate))),
};

const ipvsConn: SourceSpec<R.IpvsConnection> = {
  schema: R.ipvsConnection,
  keyOf: (c) => `${c.proto}|${c.client.address}|${c.client.port}|${c.virtual.address}|${c.virtual.port}`,
  sameState: (a, b) =>
    a.state === b.state && a.destination.address === b.destination.address && a.destination.port === b.destination.port,
  refreshed: (a, b) => timerRearmed(a.expiresSeconds, b.expiresSeconds),
};

const ipsetRecord = tagged('kind', { set: R.ipsetSet, member: R.ipsetMember });
/** Options the kernel changes by itself: a hash set doubles `hashsize` as it fills (initval stays). */
const IPSET_VOLATILE_OPTIONS = new Set(['hashsize']);
const stableOptions = (o: Readonly<Record<string, string>>): string =>
  JSON.stringify(Object.entries(o).filter(([k]) => !IPSET_VOLATILE_OPTIONS.has(k)).sort(([a], [b]) => (a < b ? -1 : 1)));
const ipset: SourceSpec<R.IpsetRecord> = {
  schema: ipsetRecord,
  keyOf: (r) => (r.kind === 'set' ? `set ${r.name}` : `member ${r.set} ${r.member}`),
  // A member is there or not: its identity is all there is (a timeout counting down is not state).
  sameState: (a, b) => {
    if (a.kind === 'set' && b.kind === 'set')
      return a.type === b.type && a.family === b.family && sameJson(a.flags, b.flags) && stableOptions(a.options) === stableOptions(b.options);
    return a.kind === b.kind;
  },
  refreshed: (a, b) => a.kind === 'member' && b.kind === 'member' && countersMoved(a, b),
};

const iptablesRecord = tagged('kind', { chain: R.iptablesChain, rule: R.iptablesRule });
const iptables: SourceSpec<R.IptablesRecord> = {
  schema: iptablesRecord,
  // A rule is identified by its text (plus which duplicate it is), not its
  // position: inserting one rule must not re-key the chain below it. The same
  // text in iptables and ip6tables (`-A KUBE-SERVICES -j KUBE-NODEPORTS`) is
  // two rules.
  keyOf: (r) =>
    r.kind === 'chain'
      ? `${r.family} ${r.backend ?? '-'} ${r.table} :${r.chain}`
      : `${r.family} ${r.backend ?? '-'} ${r.table} ${r.spec}#${r.occurrence}`,
  sameState: (a, b) => (a.kind === 'chain' && b.kind === 'chain' ? a.policy === b.policy : a.kind === b.kind),
  refreshed: countersMoved,
};

const nft: SourceSpec<R.NftObject> = {
  schema: R.nftObject,
  keyOf: (o) => `${o.kind} ${o.family} ${o.table} ${o.name ?? ''} ${o.kind === 'element' ? o.text : (o.handle ?? o.text)}`,
  sameState: (a, b) => a.text === b.text && stripCounters(a.raw) === stripCounters(b.raw),
  refreshed: countersMoved,
};
function stripCounters(raw: string): string {
  return raw.replace(/"counter":\{"packets":\d+,"bytes":\d+\}/g, '"counter":{}');
}

const routes: SourceSpec<R.Route> = {
  schema: R.route,
  keyOf: (r) => `${r.family} ${r.table} ${r.type} ${r.dst} ${r.dev ?? ''} ${r.metric ?? ''}`,
  sameState: (a, b) =>
    a.via === b.via && a.proto === b.proto && a.scope === b.scope && a.src === b.src && sameJson(a.flags, b.flags),
};

const addrs: SourceSpec<R.Address> = {
  schema: R.address,
  keyOf: (a) => `${a.ifname} ${a.address}/${a.prefixLen}`,
  sameState: (a, b) => a.broadcast === b.broadcast && a.scope === b.scope && sameJson(a.flags, b.flags),
};

const links: SourceSpec<R.Link> = {
  schema: R.link,
  keyOf: (l) => l.ifname,
  sameState: (a, b) => a.operState === b.operState && a.mtu === b.mtu && sameJson(a.flags, b.flags) && a.mac === b.mac,
};

const rules: SourceSpec<R.RoutingRule> = {
  schema: R.routingRule,
  keyOf: (r) => `${r.family} ${r.raw.trim().replace(/\s+/g, ' ')}`,
  sameState: () => true,
};

const sysctl: SourceSpec<R.Sysctl> = {
  schema: R.sysctl,
  keyOf: (s) => s.name,
  sameState: (a, b) => a.value === b.value,
};

const statRows: SourceSpec<R.StatRow> = {
  schema: R.statRow,
  keyOf: (s) => `cpu${s.cpu}`,
  sameState: () => true,
  refreshed: (a, b) => !sameJson(a.counters, b.counters),
};

const kmsg: SourceSpec<R.KmsgMartian> = {
  schema: R.kmsgMartian,
  // The kernel numbers every record; a record never changes once logged.
  keyOf: (m) => String(m.seq),
  sameState: () => true,
};

export const sources = {
  iptables,
  nft,
  ipvs,
  'ipvs-conn': ipvsConn,
  ipset,
  conntrack,
  routes,
  addrs,
  links,
  rules,
  sysctl,
  'conntrack-stat': statRows,
  'rt-cache-stat': statRows,
  kmsg,
} as const;

export type SourceName = keyof typeof sources;
export type RecordOf<N extends SourceName> = (typeof sources)[N] extends SourceSpec<infer T> ? T : never;
export const sourceNames = Object.keys(sources) as SourceName[];
export const isSourceName = (s: unknown): s is SourceName => typeof s === 'string' && Object.hasOwn(sources, s);

export function specOf<N extends SourceName>(name: N): SourceSpec<RecordOf<N>> {
  return sources[name] as unknown as SourceSpec<RecordOf<N>>;
}
