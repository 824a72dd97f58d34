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
  /** By key. */
  readonly #pending = new Map<string, { readonly since: number; readonly firstRaw: string }>();
  /**
   * Keys in the order they became pending (so in `since` order), from
   * #head on: `between` is asked for a window that only moves forward, and
   * what falls behind it is dropped from the front, so a node with thousands
   * of SYNs waiting costs a step only the ones that just crossed. A key that
   * was answered, or left and came back, is skipped by its `since`.
   */
  #order: { readonly key: string; readonly since: number }[] = [];
  #head = 0;
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
        else {
          this.#pending.set(t.key, { since: time, firstRaw: after.raw });
          this.#order.push({ key: t.key, since: time });
        }
      } else {
        this.#pending.delete(t.key);
      }
    }
    // Without calls to `between` moving the window (a caller that never asks), the order would only grow: rebuilt from what is pending.
    if (this.#order.length - this.#head > 4 * this.#max) {
      this.#order = this.#order.slice(this.#head).filter((o) => this.#pending.get(o.key)?.since === o.since);
      this.#head = 0;
    }
    return refused;
  }

  /**
   * Entries still pending that were first read unanswered after `after`
   * (null: any time) and at or before `upTo`, oldest first. Calls are meant
   * to move forward (`after` never smaller than the last call's): what was
   * before an earlier `after` is no longer kept in order.
   */
  between(after: number | null, upTo: number): PendingSyn[] {
    const order = this.#order;
    if (after !== null) while (this.#head < order.length && (order[this.#head]?.since ?? 0) <= after) this.#head++;
    // The dropped front is cut off now and then, not on every step.
    if (this.#head > 1024 && this.#head * 2 > order.length) {
      this.#order = order.slice(this.#head);
      this.#head = 0;
    }
    const out: PendingSyn[] = [];
    for (let i = this.#head; i < this.#order.length; i++) {
      const o = this.#order[i];
      if (o === undefined || o.since > upTo) break;
      const p = this.#pending.get(o.key);
      if (p !== undefined && p.since === o.since && (after === null || o.since > after)) out.push({ key: o.key, since: p.since, firstRaw: p.firstRaw });
    }
    return out;
  }
}
