// Conntrack entries still in SYN_SENT with no reply, and since when: a SYN
// that a healthy endpoint answers in milliseconds is still unanswered after
// seconds. Timers cannot tell this at 1 Hz (a retransmission re-arms the
// 120 s timer within the same second it was sampled in), ages can.
import type { ConntrackEntry } from '../../contract/records.ts';
import type { Transition } from '../state/node-view.ts';

export interface PendingSyn {
  /** The entry's conntrack key (for the time its current line was read). */
  readonly key: string;
  readonly since: number;
  /** The entry as first read unanswered, at `since`: the start of the wait a finding quotes. */
  readonly first: ConntrackEntry;
  /** The entry as last read. */
  readonly entry: ConntrackEntry;
}

export class PendingSyns {
  readonly #pending = new Map<string, PendingSyn>();

  update(time: number, transitions: readonly Transition[]): void {
    for (const t of transitions) {
      if (t.source !== 'conntrack') continue;
      const after = t.after;
      if (after !== undefined && after.state === 'SYN_SENT' && after.unreplied) {
        const p = this.#pending.get(t.key);
        this.#pending.set(t.key, { key: t.key, since: p?.since ?? time, first: p?.first ?? after, entry: after });
      } else {
        this.#pending.delete(t.key);
      }
    }
  }

  all(): readonly PendingSyn[] {
    return [...this.#pending.values()];
  }
}
