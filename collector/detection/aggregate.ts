// Folds repeats so a rollout with ten thousand bad connections is a readable
// log that still names every flow. The first finding of a kind for a node,
// Service and endpoint is logged at once, with its own tuple and evidence.
// Repeats inside the window are counted and logged as one line when the
// window closes, listing every distinct client tuple (up to MAX_TUPLES, then
// a count) with first and last seen. A fold never spans a quiet gap longer
// than the window: a later burst is a new event, logged at once again.
import { tupleText, type Evidence, type Finding, type Tuple } from './findings.ts';

/** Distinct tuples a folded line lists by name. */
export const MAX_TUPLES = 20;
/** Distinct tuples beyond those counted one by one; past this the count says "at least". */
const MAX_COUNTED_TUPLES = 10_000;

export interface FindingLine extends Finding {
  /** How many findings this line stands for. */
  readonly count: number;
  readonly firstSeen: string;
  readonly lastSeen: string;
  /** On a folded line: every distinct client tuple of the repeats (at most MAX_TUPLES), and how many more there were. */
  readonly tuples?: readonly Tuple[];
  readonly moreTuples?: number;
}

interface Window {
  readonly opened: number;
  lastTime: number;
  /** Repeats after the first, by tuple, in order of first appearance. */
  readonly repeats: Map<string, { tuple: Tuple | null; last: Finding }>;
  /** Keys of distinct tuples past MAX_TUPLES (bounded). */
  readonly others: Set<string>;
  count: number;
  firstRepeat: number | null;
  last: Finding | null;
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
      this.#open.set(key, { opened: f.time, lastTime: f.time, repeats: new Map(), others: new Set(), count: 0, firstRepeat: null, last: null });
      out.push({ ...f, count: 1, firstSeen: iso(f.time), lastSeen: iso(f.time) });
      return out;
    }
    w.count++;
    w.firstRepeat ??= f.time;
    w.lastTime = f.time;
    w.last = f;
    const tk = f.tuple === null ? '' : tupleText(f.tuple);
    // Keep the latest finding per tuple, but never more than MAX_TUPLES of them: the rest are only counted.
    const had = w.repeats.get(tk);
    if (had !== undefined) had.last = f;
    else if (w.repeats.size < MAX_TUPLES) w.repeats.set(tk, { tuple: f.tuple, last: f });
    else if (w.others.size < MAX_COUNTED_TUPLES) w.others.add(tk);
    return out;
  }

  /** Closes windows that are older than the window, or quiet for longer than it, at `now` (all of them with `all`). */
  flush(now: number, all = false): FindingLine[] {
    const out: FindingLine[] = [];
    for (const [key, w] of this.#open) {
      if (!all && now - w.opened < this.#windowMs && now - w.lastTime <= this.#windowMs) continue;
      this.#open.delete(key);
      const line = folded(w);
      if (line !== null) out.push(line);
    }
    return out;
  }
}

function folded(w: Window): FindingLine | null {
  if (w.count === 0 || w.last === null || w.firstRepeat === null) return null;
  const named = [...w.repeats.entries()];
  const tuples = named.flatMap(([, r]) => (r.tuple === null ? [] : [r.tuple]));
  const moreTuples = w.others.size;
  const overflow = moreTuples > 0;
  // The evidence of the latest repeat of each named tuple: every flow the line names is shown, none is claimed without its lines.
  const evidence: Evidence[] = named.flatMap(([, r]) => r.last.evidence);
  const last = w.last;
  const summary =
    `${w.count} more time${w.count === 1 ? '' : 's'} between ${iso(w.firstRepeat)} and ${iso(w.lastTime)}` +
    (tuples.length > 0 ? ` from ${tuples.length + moreTuples} client tuple${tuples.length + moreTuples === 1 ? '' : 's'}: ${tuples.map(tupleText).join(', ')}${overflow ? ` and ${moreTuples} more` : ''}` : '') +
    `. Latest: ${last.summary}`;
  return {
    ...last,
    summary,
    evidence,
    count: w.count,
    firstSeen: iso(w.firstRepeat),
    lastSeen: iso(w.lastTime),
    tuples,
    ...(overflow ? { moreTuples } : {}),
  };
}

const iso = (ms: number): string => new Date(ms).toISOString();
