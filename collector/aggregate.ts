// Folds repeats so a rollout with ten thousand bad connections is a readable
// log: the first finding of a kind for a node, Service and endpoint is logged
// at once; repeats inside the window are counted and logged as one line when
// the window closes.
import type { Finding } from './findings.ts';

export interface FindingLine extends Finding {
  /** How many findings this line stands for. */
  readonly count: number;
  readonly firstSeen: string;
  readonly lastSeen: string;
}

interface Window {
  readonly opened: number;
  last: Finding;
  first: Finding;
  repeats: number;
}

export class FindingAggregator {
  readonly #windowMs: number;
  readonly #open = new Map<string, Window>();

  constructor(windowMs = 60_000) {
    this.#windowMs = windowMs;
  }

  /** Returns the lines to log now. */
  add(f: Finding): FindingLine[] {
    const out = this.flush(f.time);
    const key = `${f.finding}|${f.node}|${f.service ?? ''}|${f.endpoint ?? ''}|${f.severity}`;
    const w = this.#open.get(key);
    if (w === undefined) {
      this.#open.set(key, { opened: f.time, first: f, last: f, repeats: 0 });
      out.push(line(f, 1, f.time, f.time));
    } else {
      w.repeats++;
      w.last = f;
    }
    return out;
  }

  /** Closes windows older than the window length at `now` (or all, with `all`). */
  flush(now: number, all = false): FindingLine[] {
    const out: FindingLine[] = [];
    for (const [key, w] of this.#open) {
      if (!all && now - w.opened < this.#windowMs) continue;
      this.#open.delete(key);
      if (w.repeats > 0) out.push(line(w.last, w.repeats, w.first.time, w.last.time));
    }
    return out;
  }
}

function line(f: Finding, count: number, first: number, last: number): FindingLine {
  return { ...f, count, firstSeen: new Date(first).toISOString(), lastSeen: new Date(last).toISOString() };
}
