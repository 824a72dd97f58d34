// The agent's journal: the encoded diff frames of its recent ticks, by seq,
// so that a collector that was away (restarted, or cut off by the network)
// gets every step it missed instead of a fresh snapshot that hides what came
// and went in between. Bounded by age and by bytes, whichever is hit first.
//
// The frames form a chain: each applies on the state of the seq before it.
// `base` is the seq of the state the first frame applies on (a snapshot the
// agent sent, or the last frame pushed out by a bound). A collector holding
// this run's state at any seq from `base` to the last frame can be brought up
// to date from here; one holding less cannot, and the agent starts over.
import { parseDuration } from '../contract/duration.ts';

export interface JournalBounds {
  /** Frames older than this (by sample time, against the newest) are dropped. */
  readonly maxAgeMs: number;
  /** Encoded bytes held at most; 0 turns the journal off. */
  readonly maxBytes: number;
}

export const DEFAULT_JOURNAL: JournalBounds = { maxAgeMs: 15 * 60_000, maxBytes: 64 * 1024 * 1024 };

export interface JournalFrame {
  readonly seq: number;
  /** The agent's sample time of the frame. */
  readonly time: number;
  /** The frame as it goes on the wire. */
  readonly text: string;
  readonly bytes: number;
}

/** What a reconnect does, given what the collector holds of this run. */
export type ResumePlan =
  | { readonly kind: 'resume'; readonly fromSeq: number; readonly toSeq: number; readonly frames: number }
  | { readonly kind: 'snapshot'; readonly reason: string; readonly gap: Gap | null };

/** Steps the collector would never see: seqs `fromSeq`..`toSeq` (inclusive), `seconds` of sampling. */
export interface Gap {
  readonly fromSeq: number;
  readonly toSeq: number;
  /** Null when the collector did not say when its last step was sampled. */
  readonly seconds: number | null;
}

export class Journal {
  readonly #bounds: JournalBounds;
  readonly #frames: JournalFrame[] = [];
  /** Index of the oldest kept frame in #frames: dropping from the front is a move of this index, compacted now and then. */
  #head = 0;
  #bytes = 0;
  /** Seq (and sample time) of the state the oldest kept frame applies on; null while there is no chain (nothing sent yet, or the chain broke). */
  #base: number | null = null;
  #baseTime: number | null = null;
  /** Frames dropped by each bound since the journal started: for the agent's log and health. */
  droppedByAge = 0;
  droppedByBytes = 0;

  constructor(bounds: JournalBounds) {
    this.#bounds = bounds;
  }

  get enabled(): boolean {
    return this.#bounds.maxBytes > 0 && this.#bounds.maxAgeMs > 0;
  }

  /** Whether frames pushed now extend a chain a collector could resume from. */
  get chained(): boolean {
    return this.enabled && this.#base !== null;
  }

  get size(): number {
    return this.#frames.length - this.#head;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Seq of the state the oldest frame applies on, or null without a chain. */
  get base(): number | null {
    return this.#base;
  }

  /** Seq of the newest step the journal reaches (its last frame, or its base when it holds none). */
  get lastSeq(): number | null {
    if (this.#base === null) return null;
    return this.#frames[this.#frames.length - 1]?.seq ?? this.#base;
  }

  /**
   * A snapshot of the state at `seq` went out (or was about to). When the
   * frames reach exactly `seq` the chain goes on through it; otherwise the
   * tick at `seq` made no diff and the chain starts again from the snapshot.
   */
  snapshotAt(seq: number, time: number): void {
    if (!this.enabled) return;
    if (this.#base !== null && this.lastSeq === seq) return;
    this.#clear();
    this.#base = seq;
    this.#baseTime = time;
  }

  /** The agent lost track of what it reported (or skipped a step): no collector can resume until the next snapshot. */
  break(): void {
    this.#clear();
    this.#base = null;
    this.#baseTime = null;
  }

  /** Adds the frame of step `seq`; false (and nothing kept) when it does not extend the chain. */
  push(seq: number, time: number, text: string): boolean {
    if (!this.chained) return false;
    if (seq !== (this.lastSeq ?? -1) + 1) {
      this.break();
      return false;
    }
    const bytes = Buffer.byteLength(text);
    if (bytes > this.#bounds.maxBytes) {
      // A single frame beyond the bound: keeping it would drop every other one, and no collector could resume across it anyway.
      this.droppedByBytes++;
      this.#clear();
      this.#base = seq;
      this.#baseTime = time;
      return false;
    }
    this.#frames.push({ seq, time, text, bytes });
    this.#bytes += bytes;
    while (this.size > 0) {
      const oldest = this.#frames[this.#head];
      if (oldest === undefined) break;
      const tooOld = oldest.time < time - this.#bounds.maxAgeMs;
      const tooBig = this.#bytes > this.#bounds.maxBytes;
      if (!tooOld && !tooBig) break;
      if (tooOld) this.droppedByAge++;
      else this.droppedByBytes++;
      this.#dropOldest();
    }
    return true;
  }

  /** The kept frame right after `seq`, if the journal holds it. */
  frameAfter(seq: number): JournalFrame | undefined {
    const first = this.#frames[this.#head];
    if (first === undefined) return undefined;
    // Kept seqs are contiguous, so the frame's place follows from its seq.
    const offset = seq + 1 - first.seq;
    if (offset < 0) return undefined;
    const frame = this.#frames[this.#head + offset];
    return frame !== undefined && frame.seq === seq + 1 ? frame : undefined;
  }

  /**
   * What to do on reconnect, given the last seq of this run the collector
   * holds (`held`, null when it holds none) and that step's sample time.
   */
  plan(held: number | null, heldTime: number | null): ResumePlan {
    if (!this.enabled) return { kind: 'snapshot', reason: 'the journal is off', gap: null };
    if (held === null) return { kind: 'snapshot', reason: 'the collector holds no state of this agent run', gap: null };
    const base = this.#base;
    const last = this.lastSeq;
    if (base === null || last === null) return { kind: 'snapshot', reason: 'the journal has no unbroken chain of diffs since the last snapshot', gap: null };
    if (held > last) return { kind: 'snapshot', reason: `the collector claims seq ${held} of this run, beyond the newest step the agent made (${last})`, gap: null };
    if (held < base) {
      const seconds = heldTime === null || this.#baseTime === null ? null : Math.max(0, Math.round((this.#baseTime - heldTime) / 1000));
      return { kind: 'snapshot', reason: `the journal reaches back to seq ${base + 1}; the collector holds up to seq ${held}`, gap: { fromSeq: held + 1, toSeq: base, seconds } };
    }
    return { kind: 'resume', fromSeq: held + 1, toSeq: last, frames: last - held };
  }

  #dropOldest(): void {
    const oldest = this.#frames[this.#head];
    if (oldest === undefined) return;
    this.#bytes -= oldest.bytes;
    this.#base = oldest.seq;
    this.#baseTime = oldest.time;
    this.#head++;
    if (this.#head > 1024 && this.#head * 2 > this.#frames.length) {
      this.#frames.splice(0, this.#head);
      this.#head = 0;
    }
  }

  #clear(): void {
    this.#frames.length = 0;
    this.#head = 0;
    this.#bytes = 0;
  }
}

const BYTE_UNITS: Readonly<Record<string, number>> = { '': 1, b: 1, k: 1_000, kb: 1_000, kib: 1024, m: 1_000_000, mb: 1_000_000, mib: 1024 ** 2, g: 1_000_000_000, gb: 1_000_000_000, gib: 1024 ** 3 };

/** `--journal-max-bytes`: `64MiB`, `512KiB`, `1GB`, `1048576` or `0`/`off`; null when it is not one of those (or above 16 GiB). */
export function parseBytes(text: string): number | null {
  const t = text.trim().toLowerCase();
  if (t === 'off') return 0;
  const m = /^(\d{1,12})\s*([a-z]*)$/.exec(t);
  const unit = m?.[2] === undefined ? undefined : BYTE_UNITS[m[2]];
  if (m === null || unit === undefined) return null;
  const bytes = Number(m[1]) * unit;
  return Number.isSafeInteger(bytes) && bytes <= 16 * 1024 ** 3 ? bytes : null;
}

/** `--journal-max-age`: the shared duration syntax, or `0`/`off`. */
export function parseJournalAge(text: string): number | null {
  const t = text.trim();
  return t === '0' || t === 'off' ? 0 : parseDuration(t);
}
