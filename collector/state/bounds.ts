// Every bound the collector enforces, in one place: each is logged once when
// first hit (per subject), counted, and listed by the API, so an operator can
// see what was shed and why instead of finding out from an OOM kill.
import type { Logger } from 'pino';

export interface BoundHit {
  readonly bound: string;
  /** What hit it: a node name, a source, or `collector`. */
  readonly subject: string;
  readonly limit: number;
  readonly hits: number;
  readonly firstAt: string;
  readonly lastAt: string;
  readonly action: string;
}

/** More subjects than this fold into one `other` entry, so the record of bounds is itself bounded. */
const MAX_TRACKED = 1_000;

export class Bounds {
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #hits = new Map<string, { bound: string; subject: string; limit: number; hits: number; firstAt: number; lastAt: number; action: string }>();

  constructor(log: Logger, now: () => number = Date.now) {
    this.#log = log;
    this.#now = now;
  }

  /** Records a hit; logs only the first for this bound and subject. */
  hit(bound: string, subject: string, limit: number, action: string): void {
    const now = this.#now();
    let key = `${bound}\u0000${subject}`;
    if (!this.#hits.has(key) && this.#hits.size >= MAX_TRACKED) {
      key = `${bound}\u0000other`;
      subject = 'other';
    }
    const h = this.#hits.get(key);
    if (h !== undefined) {
      h.hits++;
      h.lastAt = now;
      return;
    }
    this.#hits.set(key, { bound, subject, limit, hits: 1, firstAt: now, lastAt: now, action });
    this.#log.warn({ bound, subject, limit, action }, `bound hit: ${bound}`);
  }

  /** Hits about one subject (a node), or all of them. */
  list(subject?: string): BoundHit[] {
    const out: BoundHit[] = [];
    for (const h of this.#hits.values())
      if (subject === undefined || h.subject === subject)
        out.push({ bound: h.bound, subject: h.subject, limit: h.limit, hits: h.hits, firstAt: new Date(h.firstAt).toISOString(), lastAt: new Date(h.lastAt).toISOString(), action: h.action });
    return out;
  }

  /** Forgets a subject's hits (a node dropped with its views). */
  forget(subject: string): void {
    for (const [k, h] of this.#hits) if (h.subject === subject) this.#hits.delete(k);
  }
}
