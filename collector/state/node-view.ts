// The collector's copy of one node: rebuilt from a snapshot, then kept current
// by diffs applied in sequence. A gap in the sequence or a diff that does not
// fit the state means the two ends disagree: the view stops applying and asks
// for a resync; what it had stays readable until the new snapshot lands.
import { diffByKey, type Diff } from '../../contract/diff.ts';
import type { AgentMessage, SourceChange, SourceStatus } from '../../contract/protocol.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { specOf, type RecordOf, type SourceName } from '../../contract/sources.ts';
import type { Bounds } from './bounds.ts';
import { heldRecordsFor, type HeldRecords } from './compact-records.ts';

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
  /** Each source's records with the sample time each was read at (compact for the big tables: state/compact-records.ts). */
  readonly #state = new Map<SourceName, HeldRecords<RecordOf<SourceName>>>();
  readonly #status = new Map<string, SourceStatus>();
  #staging: { seq: number; startedAt: number; sources: Map<SourceName, Staged> } | null = null;
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
    this.#bounds?.hit(`records.${source}`, this.name, this.#maxRecords(source), `${source} is not held for this node (${count} records); detectors skip it until a snapshot fits`);
  }

  sources(): SourceName[] {
    return [...this.#state.keys()];
  }

  records(source: SourceName): readonly RecordOf<SourceName>[] {
    return [...(this.#state.get(source)?.values() ?? [])];
  }

  /**
   * The source's records as of now, unaffected by later steps: a copy of the
   * compact store (about 200 B a conntrack record), so a caller that reads
   * them over several turns of the event loop (the API streaming a million
   * records) neither sees a torn state nor holds them all as objects.
   */
  frozenRecords(source: SourceName): Iterable<RecordOf<SourceName>> {
    return this.#state.get(source)?.copy().values() ?? [];
  }

  recordMap<N extends SourceName>(source: N): ReadonlyMap<string, RecordOf<N>> {
    // The store for `source` only ever holds that source's records (keyed by its spec).
    return (this.#state.get(source)?.view ?? EMPTY) as ReadonlyMap<string, RecordOf<N>>;
  }

  /** The sample time at which a record's current value (its `raw` as held) was read. */
  readAt(source: SourceName, key: string): number | null {
    return this.#state.get(source)?.readAt(key) ?? null;
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
      s = { parts: msg.parts, got: new Set(), records: heldRecordsFor(msg.source, specOf(msg.source).keyOf), count: 0, over: false };
      sources.set(msg.source, s);
    }
    if (s.parts !== msg.parts || s.got.has(msg.part)) return this.#resync(`snapshot of ${msg.source} at seq ${msg.seq} arrived inconsistent (part ${msg.part}/${msg.parts})`);
    s.got.add(msg.part);
    // Past the bound, parts are counted but not kept: the source will be dropped whole at the end.
    if (!s.over && s.count + msg.records.length <= this.#maxRecords(msg.source)) {
      // Each part goes into the store it will be held in as it arrives: a big snapshot is never held as objects, and the end has only the diff left to do.
      const keyOf = specOf(msg.source).keyOf;
      for (const r of msg.records) s.records.put(keyOf(r), r, msg.time);
      s.count += msg.records.length;
    } else {
      s.over = true;
      s.count += msg.records.length;
    }
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
    const incoming: Map<SourceName, Staged> = staging?.sources ?? new Map();
    for (const [source, s] of incoming) {
      if (s.got.size !== s.parts) return this.#resync(`snapshot of ${source} at seq ${msg.seq} is missing parts (${s.got.size}/${s.parts})`);
    }
    // A snapshot after a resync still tells what moved since the old state.
    const transitions: Transition[] = [];
    for (const source of [...this.#state.keys()]) {
      if (incoming.has(source)) continue;
      const old = this.#state.get(source);
      const empty = { added: [], removed: [...(old?.keys() ?? [])], changed: [], refreshed: [] };
      for (const t of transitionsOf(source, old, empty)) transitions.push(t);
      this.#state.delete(source);
    }
    for (const [source, s] of incoming) {
      if (s.over) {
        this.#dropOverBound(source, s.count);
        continue;
      }
      this.#overBound.delete(source);
      const spec = specOf(source);
      const map = s.records;
      const old = this.#state.get(source);
      // One push per element: spreading 250k transitions into push() overflows the stack.
      if (old !== undefined) for (const t of transitionsOf(source, old, diffByKey<RecordOf<SourceName>>(old.view, map.view, spec))) transitions.push(t);
      else for (const t of transitionsOf(source, undefined, { added: [...map.values()], removed: [], changed: [], refreshed: [] })) transitions.push(t);
      this.#state.set(source, map);
      changes.push(snapshotChange(source, map));
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
        map = heldRecordsFor(change.source, specOf(change.source).keyOf);
        this.#state.set(change.source, map);
      }
      for (const t of transitionsOf(change.source, map, change)) transitions.push(t);
      const mismatched = applyHeld(map, change, specOf(change.source).keyOf, msg.time);
      if (mismatched.length > 0)
        return this.#resync(`diff for ${change.source} at seq ${msg.seq} does not fit the state (${mismatched.length} unknown keys, first ${JSON.stringify(mismatched[0])})`);
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

/** A source's snapshot parts as they arrive, put straight into the store that will hold them. */
interface Staged {
  readonly parts: number;
  readonly got: Set<number>;
  readonly records: HeldRecords<RecordOf<SourceName>>;
  /** Records sent, kept or not. */
  count: number;
  /** Past the record bound: the rest is counted, not kept, and the source is dropped at the end. */
  over: boolean;
}

/**
 * A snapshot step's change for one source. Its records are what the store
 * held at the snapshot, read out when asked for (history folds it, a bundle
 * writes it) rather than kept as an array of objects beside the store: a
 * frozen compact copy is a fraction of that. Each read makes a new array.
 */
function snapshotChange(source: SourceName, held: HeldRecords<RecordOf<SourceName>>): SourceChange {
  const frozen = held.copy();
  return {
    source,
    get added(): readonly RecordOf<SourceName>[] {
      return [...frozen.values()];
    },
    removed: [],
    changed: [],
    refreshed: [],
  };
}

/**
 * contract/diff.ts's applyDiff on a store, with each record's read time: the
 * same keys count as not fitting (a removed or changed key the state never
 * had), and the caller resynchronises on them.
 */
function applyHeld<T>(state: HeldRecords<T>, d: Diff<T>, keyOf: (r: T) => string, time: number): string[] {
  const mismatched: string[] = [];
  for (const k of d.removed) if (!state.delete(k)) mismatched.push(k);
  for (const r of d.added) state.put(keyOf(r), r, time);
  for (const list of [d.changed, d.refreshed])
    for (const r of list) {
      const k = keyOf(r);
      if (!state.has(k)) mismatched.push(k);
      state.put(k, r, time);
    }
  return mismatched;
}

/**
 * Pairs each record of a diff with what the state held for its key before the
 * diff. A key the state lacks yields no transition: the diff does not fit, and
 * the caller resynchronises instead of detecting on it.
 */
function transitionsOf(source: SourceName, before: HeldRecords<RecordOf<SourceName>> | undefined, diff: Omit<SourceChange, 'source'>): Transition[] {
  const spec = specOf(source);
  const out: Transition[] = [];
  const at = (key: string): number => before?.readAt(key) ?? 0;
  // `source` and the records come from one SourceChange (decoded per source), so each pairing is of one source.
  const push = (t: TransitionOf<SourceName>): void => {
    out.push(t as Transition);
  };
  for (const key of diff.removed) {
    const b = before?.get(key);
    if (b !== undefined) push({ source, kind: 'removed', key, before: b, beforeAt: at(key), after: undefined });
  }
  for (const r of diff.added) push({ source, kind: 'added', key: spec.keyOf(r), before: undefined, beforeAt: null, after: r });
  for (const kind of ['changed', 'refreshed'] as const)
    for (const r of diff[kind]) {
      const key = spec.keyOf(r);
      const b = before?.get(key);
      if (b !== undefined) push({ source, kind, key, before: b, beforeAt: at(key), after: r });
    }
  return out;
}
