// A node's recent past: the timeline of applied steps within the history
// window, from which a bundle slices any part, starting with a full snapshot
// so it can be replayed on its own.
//
// Two modes. Backed by a store (the collector process: its `--data-dir`, or
// a temporary file without one), the heap keeps only the last HOT_MS of
// steps, and a slice reads the store, where every step is written as the
// frame it came from (store/store.ts): the heap does not grow with the
// window. Without a store (replays, a bundle's own replay, in-process tests:
// short runs), every step of the window is kept here, with the state just
// before the oldest (steps that age out are folded into it).
import { applyDiff } from '../../contract/diff.ts';
import type { SourceChange } from '../../contract/protocol.ts';
import { specOf, type RecordOf, type SourceName } from '../../contract/sources.ts';
import type { TimelineEntry } from './node-view.ts';

export type State = Map<SourceName, Map<string, RecordOf<SourceName>>>;

/**
 * How much of a store-backed history stays in the heap. Detectors read the
 * live state and their own windows, not these steps, and a slice reads the
 * store (queued steps are committed first), so this only has to cover a few
 * commit intervals (FLUSH_MS). It costs: at 200 nodes and 1% churn of 5,000
 * entries, 30 s of steps held as objects was ~300 MB of heap, and each
 * snapshot step's frozen copy of the node's records stayed for as long.
 */
export const HOT_MS = 3_000;

/** Where a store-backed history reads what the heap no longer holds. */
export interface HistoryStore {
  /** The node's stored steps from `from` to `to`, starting with a full snapshot (see NodeHistory.slice). */
  slice(node: string, from: number, to: number): Generator<TimelineEntry, void, void>;
  /** True when the node has anything to slice from. */
  has(node: string): boolean;
}

export function fold(state: State, entry: TimelineEntry): void {
  if (entry.kind === 'snapshot') state.clear();
  for (const c of entry.changes) {
    let map = state.get(c.source);
    if (map === undefined) {
      map = new Map();
      state.set(c.source, map);
    }
    applyDiff(map, c, specOf(c.source));
  }
}

/** A snapshot step's state, as maps by key. */
export function stateOf(snapshot: TimelineEntry): State {
  const state: State = new Map();
  fold(state, snapshot);
  return state;
}

export function snapshotOf(state: State, seq: number, time: number): TimelineEntry {
  const changes: SourceChange[] = [...state].map(([source, map]) => ({ source, added: [...map.values()], removed: [], changed: [], refreshed: [] }));
  return { seq, time, kind: 'snapshot', changes };
}

export class NodeHistory {
  readonly #entries: TimelineEntry[] = [];
  #base: State | null = null;
  #baseSeq = 0;
  #baseTime = 0;
  #windowMs: number;
  readonly #maxEntries: number;
  readonly #store: { readonly store: HistoryStore; readonly node: string } | null;
  /** How many steps were folded early because the count bound was hit. */
  overflowed = 0;

  /** With `store`, only the last HOT_MS stay in the heap and slices read the store. */
  constructor(windowMs: number, maxEntries: number, store: { readonly store: HistoryStore; readonly node: string } | null = null) {
    this.#windowMs = windowMs;
    this.#maxEntries = maxEntries;
    this.#store = store;
  }

  /** The steps held in the heap: the whole window without a store, the last HOT_MS with one. */
  get entries(): readonly TimelineEntry[] {
    return this.#entries;
  }

  /** Shortens the window to `keepMs` (the memory budget's doing) and folds what falls out; returns the steps folded. */
  shrinkTo(keepMs: number): number {
    this.#windowMs = Math.min(this.#windowMs, keepMs);
    const last = this.#entries.at(-1);
    if (last === undefined) return 0;
    return this.#drop(last.time - this.#heldMs(), false).dropped;
  }

  /** How far back the heap holds steps. */
  #heldMs(): number {
    return this.#store === null ? this.#windowMs : Math.min(this.#windowMs, HOT_MS);
  }

  /**
   * Removes steps older than `horizon` (and, with `bound`, past the count
   * bound) from the heap; without a store they are folded into the base.
   * Says how many went, and whether the count bound (not age) took any.
   */
  #drop(horizon: number, bound: boolean): { dropped: number; bounded: boolean } {
    let dropped = 0;
    let bounded = false;
    while (this.#entries.length > 1) {
      const oldest = this.#entries[0];
      if (oldest === undefined) break;
      const tooOld = oldest.time < horizon;
      const tooMany = bound && this.#entries.length > this.#maxEntries;
      if (!tooOld && !tooMany) break;
      if (!tooOld) bounded = true;
      this.#entries.shift();
      dropped++;
      // With a store the step is there already (written by the call that applied it); nothing to fold.
      if (this.#store !== null) continue;
      this.#base ??= new Map();
      fold(this.#base, oldest);
      this.#baseSeq = oldest.seq;
      this.#baseTime = oldest.time;
    }
    return { dropped, bounded };
  }

  /**
   * The state the in-memory window starts from (every step that aged out,
   * folded), as one snapshot step at the seq and time of the last step
   * folded into it; null while nothing has aged out, and always with a store
   * (which keeps its own bases).
   */
  baseEntry(): TimelineEntry | null {
    return this.#base === null ? null : snapshotOf(this.#base, this.#baseSeq, this.#baseTime);
  }

  /** Adds a step; returns true when the count bound (not age) pushed a step out. */
  push(entry: TimelineEntry): boolean {
    this.#entries.push(entry);
    const { bounded } = this.#drop(entry.time - this.#heldMs(), true);
    // With a store nothing is lost to the bound: every step is stored, the bound only trims the heap.
    if (!bounded || this.#store !== null) return false;
    this.overflowed++;
    return true;
  }

  /** The steps from `from` to `to`, starting with a full snapshot of the state at `from` (or as near after it as kept). */
  slice(from: number, to: number): TimelineEntry[] {
    return [...this.stream(from, to)];
  }

  /** False when every slice is empty (nothing to start one from): cheap, unlike reading one. */
  isEmpty(): boolean {
    if (this.#store !== null) return !this.#store.store.has(this.#store.node);
    return this.#base === null && !this.#entries.some((e) => e.kind === 'snapshot');
  }

  /** slice(), a step at a time: with a store, read from it a page at a time rather than all at once. */
  *stream(from: number, to: number): Generator<TimelineEntry, void, void> {
    if (this.#store !== null) {
      yield* this.#store.store.slice(this.#store.node, from, to);
      return;
    }
    const state: State = new Map();
    let seq = this.#baseSeq;
    let time = this.#baseTime;
    let have = false;
    if (this.#base !== null) {
      for (const [s, m] of this.#base) state.set(s, new Map(m));
      have = true;
    }
    let emitted = false;
    for (const e of this.#entries) {
      // Before the slice (or before any snapshot to start from): fold into the starting state.
      if (!emitted && (e.time < from || (!have && e.kind !== 'snapshot'))) {
        fold(state, e);
        seq = e.seq;
        time = e.time;
        have ||= e.kind === 'snapshot';
        continue;
      }
      if (e.time > to) break;
      if (!emitted && e.kind !== 'snapshot') yield snapshotOf(state, seq, time);
      emitted = true;
      yield e;
    }
    if (!emitted && have) yield snapshotOf(state, seq, time);
  }
}
