// Conntrack entries that showed traffic in the last few seconds: created,
// changed state, or had their timer re-armed. When a rollout removes an
// endpoint, entries to it still active at that moment are stale NAT at once,
// without waiting for the next re-arm to show (whole-second timers need 2 s).
import type { ConntrackEntry } from '../contract/records.ts';
import type { Transition } from './node-view.ts';

export const ACTIVE_WITHIN_MS = 4_000;

export class RecentActivity {
  readonly #seen = new Map<string, { time: number; entry: ConntrackEntry }>();

  /** `snapshot`: the first picture of a node shows what exists, not what just moved. */
  update(time: number, transitions: readonly Transition[], snapshot: boolean): void {
    for (const t of transitions) {
      if (t.source !== 'conntrack') continue;
      if (t.after === undefined) this.#seen.delete(t.key);
      else if (!snapshot || t.kind !== 'added') this.#seen.set(t.key, { time, entry: t.after as ConntrackEntry });
    }
    for (const [k, v] of this.#seen) if (time - v.time > ACTIVE_WITHIN_MS) this.#seen.delete(k);
  }

  entries(): IterableIterator<{ time: number; entry: ConntrackEntry }> {
    return this.#seen.values();
  }
}
