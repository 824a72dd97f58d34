// The one keyed diff every source goes through. Identity (keyOf) and state
// (sameState) come from the source's spec, so a conntrack tuple that goes
// TIME_WAIT -> SYN_SENT is reported as one `changed` record, not a remove
// plus an add.
import type { SourceSpec } from './sources.ts';

export interface Diff<T> {
  readonly added: readonly T[];
  /** Keys of records that are gone. */
  readonly removed: readonly string[];
  /** Same key, different state. */
  readonly changed: readonly T[];
  /** Same key and state, volatile part worth sending (timer re-armed, counters moved). */
  readonly refreshed: readonly T[];
}

export type Keyed<T> = ReadonlyMap<string, T>;

/**
 * Indexes records by key. A duplicate key keeps the first record and is
 * counted: two records the spec cannot tell apart are a parser or spec bug
 * worth seeing, not something to hide.
 */
export function indexByKey<T>(records: readonly T[], spec: Pick<SourceSpec<T>, 'keyOf'>): { map: Map<string, T>; duplicates: number } {
  const map = new Map<string, T>();
  let duplicates = 0;
  for (const r of records) {
    const k = spec.keyOf(r);
    if (map.has(k)) duplicates++;
    else map.set(k, r);
  }
  return { map, duplicates };
}

export function diffByKey<T>(prev: Keyed<T>, next: Keyed<T>, spec: SourceSpec<T>): Diff<T> {
  const added: T[] = [];
  const changed: T[] = [];
  const refreshed: T[] = [];
  const removed: string[] = [];
  for (const [k, n] of next) {
    const p = prev.get(k);
    if (p === undefined) added.push(n);
    else if (p === n) continue;
    else if (!spec.sameState(p, n)) changed.push(n);
    else if (spec.refreshed?.(p, n)) refreshed.push(n);
  }
  for (const k of prev.keys()) if (!next.has(k)) removed.push(k);
  return { added, removed, changed, refreshed };
}

export function isEmptyDiff(d: Diff<unknown>): boolean {
  return d.added.length === 0 && d.removed.length === 0 && d.changed.length === 0 && d.refreshed.length === 0;
}

/**
 * Applies a diff in place. Returns the keys it could not apply (a removed or
 * changed key the state never had): on the wire that means the two ends
 * disagree, and the caller asks for a resync.
 */
export function applyDiff<T>(state: Map<string, T>, diff: Diff<T>, spec: Pick<SourceSpec<T>, 'keyOf'>): string[] {
  const mismatched: string[] = [];
  for (const k of diff.removed) if (!state.delete(k)) mismatched.push(k);
  for (const r of diff.added) state.set(spec.keyOf(r), r);
  for (const r of diff.changed) {
    const k = spec.keyOf(r);
    if (!state.has(k)) mismatched.push(k);
    state.set(k, r);
  }
  for (const r of diff.refreshed) {
    const k = spec.keyOf(r);
    if (!state.has(k)) mismatched.push(k);
    state.set(k, r);
  }
  return mismatched;
}
