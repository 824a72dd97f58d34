// A node's recent past: the timeline of applied steps within the history
// window, plus the state just before the oldest kept step (steps that age out
// are folded into it). Any slice of the window can then start with a full
// snapshot, which is what a bundle needs to be replayed on its own.
import { applyDiff } from '../../contract/diff.ts';
import type { SourceChange } from '../../contract/protocol.ts';
import { specOf, type RecordOf, type SourceName } from '../../contract/sources.ts';
import type { TimelineEntry } from './node-view.ts';

type State = Map<SourceName, Map<string, RecordOf<SourceName>>>;

function fold(state: State, entry: TimelineEntry): void {
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

function snapshotOf(state: State, seq: number, time: number): TimelineEntry {
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
  /** How many steps were folded early because the count bound was hit. */
  overflowed = 0;

  constructor(windowMs: number, maxEntries: number) {
    this.#windowMs = windowMs;
    this.#maxEntries = maxEntries;
  }

  get entries(): readonly TimelineEntry[] {
    return this.#entries;
  }

  /** Shortens the window to `keepMs` (the memory budget's doing) and folds what falls out; returns the steps folded. */
  shrinkTo(keepMs: number): number {
    this.#windowMs = Math.min(this.#windowMs, keepMs);
    const last = this.#entries.at(-1);
    if (last === undefined) return 0;
    const horizon = last.time - this.#windowMs;
    let folded = 0;
    while (this.#entries.length > 1) {
      const oldest = this.#entries[0];
      if (oldest === undefined || oldest.time >= horizon) break;
      this.#entries.shift();
      this.#base ??= new Map();
      fold(this.#base, oldest);
      this.#baseSeq = oldest.seq;
      this.#baseTime = oldest.time;
      folded++;
    }
    return folded;
  }

  /**
   * The state the window starts from (every step that aged out, folded), as
   * one snapshot step at the seq and time of the last step folded into it;
   * null while nothing has aged out. The store keeps it in place of the steps
   * it deletes, so a reload starts from the same state.
   */
  baseEntry(): TimelineEntry | null {
    return this.#base === null ? null : snapshotOf(this.#base, this.#baseSeq, this.#baseTime);
  }

  /** Adds a step; returns true when the count bound (not age) pushed a step out. */
  push(entry: TimelineEntry): boolean {
    this.#entries.push(entry);
    const horizon = entry.time - this.#windowMs;
    let bounded = false;
    while (this.#entries.length > 1) {
      const oldest = this.#entries[0];
      if (oldest === undefined) break;
      const tooOld = oldest.time < horizon;
      const tooMany = this.#entries.length > this.#maxEntries;
      if (!tooOld && !tooMany) break;
      if (!tooOld) bounded = true;
      this.#entries.shift();
      this.#base ??= new Map();
      fold(this.#base, oldest);
      this.#baseSeq = oldest.seq;
      this.#baseTime = oldest.time;
    }
    if (bounded) this.overflowed++;
    return bounded;
  }

  /** The steps from `from` to `to`, starting with a full snapshot of the state at `from` (or as near after it as kept). */
  slice(from: number, to: number): TimelineEntry[] {
    const state: State = new Map();
    let seq = this.#baseSeq;
    let time = this.#baseTime;
    let have = false;
    if (this.#base !== null) {
      for (const [s, m] of this.#base) state.set(s, new Map(m));
      have = true;
    }
    const out: TimelineEntry[] = [];
    for (const e of this.#entries) {
      // Before the slice (or before any snapshot to start from): fold into the starting state.
      if (out.length === 0 && (e.time < from || (!have && e.kind !== 'snapshot'))) {
        fold(state, e);
        seq = e.seq;
        time = e.time;
        have ||= e.kind === 'snapshot';
        continue;
      }
      if (e.time > to) break;
      if (out.length === 0 && e.kind !== 'snapshot') out.push(snapshotOf(state, seq, time));
      out.push(e);
    }
    if (out.length === 0 && have) out.push(snapshotOf(state, seq, time));
    return out;
  }
}
