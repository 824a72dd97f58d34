// The collector's copy of one node: rebuilt from a snapshot, then kept current
// by diffs applied in sequence. A gap in the sequence or a diff that does not
// fit the state means the two ends disagree: the view stops applying and asks
// for a resync; what it had stays readable until the new snapshot lands.
import { applyDiff, diffByKey } from '../../contract/diff.ts';
import type { AgentMessage, SourceChange, SourceStatus } from '../../contract/protocol.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { specOf, type RecordOf, type SourceName } from '../../contract/sources.ts';
import type { Bounds } from './bounds.ts';

/**
 * Records held per node and source. Conntrack and the IPVS connection table
 * follow nf_conntrack_max (often 262,144; 1M+ on big nodes); rules, routes and
 * sets are orders of magnitude smaller on any real node.
 */
export function maxRecords(source: SourceName): number {
  return source === 'conntrack' || source === 'ipvs-conn' ? 2_000_000 : 200_000;
}
/** A snapshot whose parts stop coming for this long is dropped, not kept half-built. */
export const MAX_STAGING_MS = 60_000;

type SnapshotMsg = Extract<AgentMessage, { type: 'snapshot' }>;
type SnapshotEndMsg = Extract<AgentMessage, { type: 'snapshot-end' }>;
type DiffMsg = Extract<AgentMessage, { type: 'diff' }>;

/** One applied step of a node's timeline: what changed at `time`. */
export interface TimelineEntry {
  readonly seq: number;
  readonly time: number;
  readonly kind: 'snapshot' | 'diff';
  readonly changes: readonly SourceChange[];
}

/**
 * One record's move in one step, with what it was before: what detectors look
 * at. A union distributed over sources and kinds, so `t.source === 'conntrack'
 * && t.kind === 'changed'` gives two typed ConntrackEntry values and no
 * detector needs a cast. `beforeAt` is the sample time `before` was read at:
 * its line reads as quoted at that time, and no later.
 */
export type Transition = { readonly [N in SourceName]: TransitionOf<N> }[SourceName];
export type TransitionOf<N extends SourceName> =
  | { readonly source: N; readonly kind: 'added'; readonly key: string; readonly before: undefined; readonly beforeAt: null; readonly after: RecordOf<N> }
  | { readonly source: N; readonly kind: 'removed'; readonly key: string; readonly before: RecordOf<N>; readonly beforeAt: number; readonly after: undefined }
  | { readonly source: N; readonly kind: 'changed' | 'refreshed'; readonly key: string; readonly before: RecordOf<N>; readonly beforeAt: number; readonly after: RecordOf<N> };

export type ApplyOutcome =
  | { readonly kind: 'applied'; readonly entry: TimelineEntry; readonly transitions: readonly Transition[] }
  | { readonly kind: 'staged' }
  | { readonly kind: 'ignored'; readonly reason: string }
  | { readonly kind: 'resync'; readonly reason: string };

export class NodeView {
  readonly name: string;
  agentVersion: string | null = null;
  intervalMs: number | null = null;
  facts: NodeFacts | null = null;
  connected = false;
  connectedAt: number | null = null;
  lastSeq: number | null = null;
  /** The agent's sample time of the last applied frame, and when we received it. */
  lastSampleTime: number | null = null;
  lastReceivedAt: number | null = null;
  rejectedFrames = 0;
  resyncs = 0;
  readonly #state = new Map<SourceName, Map<string, RecordOf<SourceName>>>();
  /** Sample time each record's current value was read at, by source and key. */
  readonly #readAt = new Map<SourceName, Map<string, number>>();
  readonly #status = new Map<string, SourceStatus>();
  #staging: { seq: number; startedAt: number; sources: Map<SourceName, { parts: number; got: Set<number>; records: RecordOf<SourceName>[]; over?: boolean }> } | null = null;
  #awaitingSnapshot = true;
  /** Sources beyond their record bound: not held at all (half a table would mislead detectors), until a snapshot fits again. */
  readonly #overBound = new Set<SourceName>();
  readonly #bounds: Bounds | null;
  readonly #maxRecords: (source: SourceName) => number;

  /** `limit`: records held per source, when not `maxRecords` (a collector configured smaller, or a test). */
  constructor(name: string, bounds: Bounds | null = null, limit: (source: SourceName) => number = maxRecords) {
    this.name = name;
    this.#bounds = bounds;
    this.#maxRecords = limit;
  }

  get awaitingSnapshot(): boolean {
    return this.#awaitingSnapshot;
  }

  /** Sources dropped for exceeding their record bound. */
  get overBound(): readonly SourceName[] {
    return [...this.#overBound];
  }

  #dropOverBound(source: SourceName, count: number): void {
    this.#overBound.add(source);
    this.#state.delete(source);
    this.#readAt.delete(source);
    this.#bounds?.hit(`records.${source}`, this.name, this.#maxRecords(source), `${source} is not held for this node (${count} records); detectors skip it until a snapshot fits`);
  }

  sources(): SourceName[] {
    return [...this.#state.keys()];
  }

  records(source: SourceName): readonly RecordOf<SourceName>[] {
    return [...(this.#state.get(source)?.values() ?? [])];
  }

  recordMap<N extends SourceName>(source: N): ReadonlyMap<string, RecordOf<N>> {
    // The map for `source` only ever holds that source's records (keyed by its spec).
    return (this.#state.get(source) ?? EMPTY) as ReadonlyMap<string, RecordOf<N>>;
  }

  /** The sample time at which a record's current value (its `raw` as held) was read. */
  readAt(source: SourceName, key: string): number | null {
    return this.#readAt.get(source)?.get(key) ?? null;
  }

  statuses(): SourceStatus[] {
    return [...this.#status.values()];
  }

  status(source: string): SourceStatus | undefined {
    return this.#status.get(source);
  }

  /** A new connection always starts over with a snapshot. */
  onConnect(now: number): void {
    this.connected = true;
    this.connectedAt = now;
    this.#awaitingSnapshot = true;
    this.#staging = null;
  }

  onDisconnect(): void {
    this.connected = false;
    this.#staging = null;
  }

  /**
   * Drops a snapshot whose parts stopped coming more than MAX_STAGING_MS ago.
   * Without this the age is only checked when another part arrives, and a
   * snapshot that simply stops would hold its parts for as long as the
   * connection stays up. True when it dropped one (the caller asks for a resync).
   */
  dropStaleStaging(now: number): boolean {
    if (this.#staging === null || now - this.#staging.startedAt <= MAX_STAGING_MS) return false;
    this.#bounds?.hit('snapshot.age', this.name, MAX_STAGING_MS, 'a snapshot that stopped arriving was dropped and asked for again');
    this.requestResync();
    return true;
  }

  requestResync(): void {
    this.#awaitingSnapshot = true;
    this.#staging = null;
    this.resyncs++;
  }

  applySnapshotPart(msg: SnapshotMsg, now: number): ApplyOutcome {
    if (this.#staging !== null && this.#staging.seq === msg.seq && now - this.#staging.startedAt > MAX_STAGING_MS) {
      this.#bounds?.hit('snapshot.age', this.name, MAX_STAGING_MS, 'a snapshot that stopped arriving was dropped and asked for again');
      return this.#resync(`snapshot at seq ${msg.seq} took longer than ${MAX_STAGING_MS / 1000} s to arrive`);
    }
    if (this.#staging === null || this.#staging.seq !== msg.seq) this.#staging = { seq: msg.seq, startedAt: now, sources: new Map() };
    const sources = this.#staging.sources;
    let s = sources.get(msg.source);
    if (s === undefined) {
      s = { parts: msg.parts, got: new Set(), records: [] };
      sources.set(msg.source, s);
    }
    if (s.parts !== msg.parts || s.got.has(msg.part)) return this.#resync(`snapshot of ${msg.source} at seq ${msg.seq} arrived inconsistent (part ${msg.part}/${msg.parts})`);
    s.got.add(msg.part);
    // Past the bound, parts are counted but not kept: the source will be dropped whole at the end.
    if (s.records.length + msg.records.length <= this.#maxRecords(msg.source)) for (const r of msg.records) s.records.push(r);
    else s.over = true;
    this.lastReceivedAt = now;
    return { kind: 'staged' };
  }

  applySnapshotEnd(msg: SnapshotEndMsg, now: number): ApplyOutcome {
    const staging = this.#staging;
    if (staging === null || staging.seq !== msg.seq) {
      // A snapshot with no records at all (nothing sampled yet) is legitimate.
      if (staging !== null) return this.#resync(`snapshot end for seq ${msg.seq} without its parts`);
    }
    const changes: SourceChange[] = [];
    const incoming: Map<SourceName, { parts: number; got: Set<number>; records: RecordOf<SourceName>[]; over?: boolean }> = staging?.sources ?? new Map();
    for (const [source, s] of incoming) {
      if (s.got.size !== s.parts) return this.#resync(`snapshot of ${source} at seq ${msg.seq} is missing parts (${s.got.size}/${s.parts})`);
    }
    // A snapshot after a resync still tells what moved since the old state.
    const transitions: Transition[] = [];
    for (const source of [...this.#state.keys()]) {
      if (incoming.has(source)) continue;
      const empty = { added: [], removed: [...(this.#state.get(source)?.keys() ?? [])], changed: [], refreshed: [] };
      for (const t of transitionsOf(source, this.#state.get(source) ?? EMPTY, this.#readAt.get(source), empty)) transitions.push(t);
      this.#state.delete(source);
      this.#readAt.delete(source);
    }
    for (const [source, s] of incoming) {
      if (s.over === true) {
        this.#dropOverBound(source, s.records.length);
        continue;
      }
      this.#overBound.delete(source);
      const spec = specOf(source);
      const map = new Map<string, RecordOf<SourceName>>();
      for (const r of s.records) map.set(spec.keyOf(r), r);
      const old = this.#state.get(source) ?? new Map<string, RecordOf<SourceName>>();
      // One push per element: spreading 250k transitions into push() overflows the stack.
      for (const t of transitionsOf(source, old, this.#readAt.get(source), diffByKey<RecordOf<SourceName>>(old, map, spec))) transitions.push(t);
      this.#state.set(source, map);
      const readAt = new Map<string, number>();
      for (const key of map.keys()) readAt.set(key, msg.time);
      this.#readAt.set(source, readAt);
      changes.push({ source, added: s.records, removed: [], changed: [], refreshed: [] });
    }
    this.#status.clear();
    for (const st of msg.status) this.#status.set(st.source, st);
    this.#staging = null;
    this.#awaitingSnapshot = false;
    this.lastSeq = msg.seq;
    this.lastSampleTime = msg.time;
    this.lastReceivedAt = now;
    return { kind: 'applied', entry: { seq: msg.seq, time: msg.time, kind: 'snapshot', changes }, transitions };
  }

  applyDiff(msg: DiffMsg, now: number): ApplyOutcome {
    this.lastReceivedAt = now;
    if (this.#awaitingSnapshot) return { kind: 'ignored', reason: 'waiting for a snapshot' };
    if (this.lastSeq !== null && msg.seq !== this.lastSeq + 1) return this.#resync(`sequence gap: expected ${this.lastSeq + 1}, got ${msg.seq}`);
    const transitions: Transition[] = [];
    for (const change of msg.changes) {
      if (this.#overBound.has(change.source)) continue;
      let map = this.#state.get(change.source);
      if (map === undefined) {
        map = new Map();
        this.#state.set(change.source, map);
      }
      let readAt = this.#readAt.get(change.source);
      if (readAt === undefined) {
        readAt = new Map();
        this.#readAt.set(change.source, readAt);
      }
      for (const t of transitionsOf(change.source, map, readAt, change)) transitions.push(t);
      const spec = specOf(change.source);
      const mismatched = applyDiff(map, change, spec);
      if (mismatched.length > 0)
        return this.#resync(`diff for ${change.source} at seq ${msg.seq} does not fit the state (${mismatched.length} unknown keys, first ${JSON.stringify(mismatched[0])})`);
      for (const key of change.removed) readAt.delete(key);
      for (const list of [change.added, change.changed, change.refreshed]) for (const r of list) readAt.set(spec.keyOf(r), msg.time);
      if (map.size > this.#maxRecords(change.source)) {
        // What this step did to the source is not detected on either: the source is gone as a whole.
        for (let i = transitions.length - 1; i >= 0; i--) if (transitions[i]?.source === change.source) transitions.splice(i, 1);
        this.#dropOverBound(change.source, map.size);
      }
    }
    for (const st of msg.status) this.#status.set(st.source, st);
    this.lastSeq = msg.seq;
    this.lastSampleTime = msg.time;
    return { kind: 'applied', entry: { seq: msg.seq, time: msg.time, kind: 'diff', changes: msg.changes }, transitions };
  }

  #resync(reason: string): ApplyOutcome {
    this.requestResync();
    return { kind: 'resync', reason };
  }
}

const EMPTY: ReadonlyMap<string, never> = new Map<string, never>();

/**
 * Pairs each record of a diff with what the state held for its key before the
 * diff. A key the state lacks yields no transition: the diff does not fit, and
 * the caller resynchronises instead of detecting on it.
 */
function transitionsOf(
  source: SourceName,
  before: ReadonlyMap<string, RecordOf<SourceName>>,
  readAt: ReadonlyMap<string, number> | undefined,
  diff: Omit<SourceChange, 'source'>,
): Transition[] {
  const spec = specOf(source);
  const out: Transition[] = [];
  const at = (key: string): number => readAt?.get(key) ?? 0;
  // `source` and the records come from one SourceChange (decoded per source), so each pairing is of one source.
  const push = (t: TransitionOf<SourceName>): void => {
    out.push(t as Transition);
  };
  for (const key of diff.removed) {
    const b = before.get(key);
    if (b !== undefined) push({ source, kind: 'removed', key, before: b, beforeAt: at(key), after: undefined });
  }
  for (const r of diff.added) push({ source, kind: 'added', key: spec.keyOf(r), before: undefined, beforeAt: null, after: r });
  for (const kind of ['changed', 'refreshed'] as const)
    for (const r of diff[kind]) {
      const key = spec.keyOf(r);
      const b = before.get(key);
      if (b !== undefined) push({ source, kind, key, before: b, beforeAt: at(key), after: r });
    }
  return out;
}
