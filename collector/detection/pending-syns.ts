// Conntrack entries still in SYN_SENT with no reply, and since when: a SYN
// that a healthy endpoint answers in milliseconds is still unanswered after
// seconds. Timers cannot tell this at 1 Hz (a retransmission re-arms the
// 120 s timer within the same second it was sampled in), ages can.
//
// Kept small, because every node has some and a node under a SYN flood has
// many: per entry only when it was first read unanswered and its line as read
// then (the evidence a finding quotes; the line changes every sample as the
// timer counts down). The entry as it is now is the node's live state. Whole
// records here were ~2 KB an entry, 110 MB of heap at 200 nodes.
import type { Transition } from '../state/node-view.ts';

export interface PendingSyn {
  /** The entry's conntrack key. */
  readonly key: string;
  /** Sample time it was first read unanswered. */
  readonly since: number;
  /** Its line as read at `since`. */
  readonly firstRaw: string;
}

/**
 * Entries tracked per node. A node past it has more half-open connections
 * than any finding could list (a SYN flood, a dead backend under load); the
 * newest are then not tracked, and the bound says so.
 */
export const MAX_PENDING_SYNS = 20_000;

export class PendingSyns {
  /** By key, in insertion order: a key keeps its place while it stays pending, so the order is `since` order. */
  readonly #pending = new Map<string, { readonly since: number; readonly firstRaw: string }>();
  readonly #max: number;

  constructor(max = MAX_PENDING_SYNS) {
    this.#max = max;
  }

  get size(): number {
    return this.#pending.size;
  }

  /** Applies a step; returns how many newly pending entries the bound kept out. */
  update(time: number, transitions: readonly Transition[]): number {
    let refused = 0;
    for (const t of transitions) {
      if (t.source !== 'conntrack') continue;
      const after = t.after;
      if (after !== undefined && after.state === 'SYN_SENT' && after.unreplied) {
        if (this.#pending.has(t.key)) continue;
        if (this.#pending.size >= this.#max) refused++;
        else this.#pending.set(t.key, { since: time, firstRaw: after.raw });
      } else {
        this.#pending.delete(t.key);
      }
    }
    return refused;
  }

  /** Entries first read unanswered after `after` (null: any time) and at or before `upTo`, oldest first. */
  between(after: number | null, upTo: number): PendingSyn[] {
    const out: PendingSyn[] = [];
    for (const [key, p] of this.#pending) {
      if (p.since > upTo) break;
      if (after === null || p.since > after) out.push({ key, since: p.since, firstRaw: p.firstRaw });
    }
    return out;
  }
}
