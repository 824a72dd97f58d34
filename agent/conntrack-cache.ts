// The conntrack table is the one large source (250k entries at 1 Hz), and
// from one second to the next almost every line differs only in its
// countdown timer. So the agent keeps conntrack compact: per entry its key,
// its line (a copy, not a view of the read) and its timer, and nothing parsed. A line
// whose text after the timer was seen last tick is the same entry in the same
// state and is not parsed again; only new or changed lines are. Full records
// are made from the kept lines only when they are sent (a diff's few changed
// entries, or a snapshot chunk by chunk).
import type { ConntrackEntry } from '../contract/records.ts';
import { sources, type Problem, type SourceSpec } from '../contract/sources.ts';
import { isConntrackToolsMessage, parseConntrackLine } from './sources/conntrack.ts';


/** A conntrack entry as the agent keeps it between ticks. */
export interface CompactEntry {
  readonly key: string;
  /** The line as printed when this entry was last sent; its timer may have counted down since. */
  readonly raw: string;
  readonly timeout: number | null;
  readonly proto: string;
}

interface Cached {
  entry: CompactEntry;
  /** Where the timer sits in `entry.raw`'s first-seen line (both -1 without a timer). */
  readonly timerStart: number;
  readonly timerEnd: number;
  /** The first-seen line: what a later line's bytes outside the timer must equal. */
  readonly line: string;
  /** The timer as printed when the entry was last sent, and when that was: the reference a re-arm is measured against. */
  refTimeout: number | null;
  refTime: number;
}

/** Identity and state of compact entries: the same as the contract's, read from the line. */
export const compactConntrackSpec: SourceSpec<CompactEntry> = {
  schema: { describe: 'compact conntrack entry', decode: () => ({ ok: false, error: 'compact entries never cross the wire' }) },
  keyOf: (e) => e.key,
  sameState: (a, b) => withoutTimer(a.raw) === withoutTimer(b.raw),
  // The cache makes a new entry object for a kept line only when its timer was re-armed.
  refreshed: () => true,
};

/**
 * Timers print whole seconds and the agent samples once a second, so one
 * pair of samples cannot tell a timer held at its maximum by a client sending
 * every 200 ms (120, 119, 120, 119 …) from one counting down. Against a
 * reference instead: an idle timer loses as many seconds as have passed; a
 * re-armed one loses at least 2 fewer. Healthy ESTABLISHED TCP flows re-arm
 * their 5-day timer with every packet and are left out, or every busy flow
 * would be sent every other second.
 */
export function rearmedSince(refTimeout: number | null, refTime: number, timeout: number | null, now: number, entry: { proto: string; raw: string }): boolean {
  if (refTimeout === null || timeout === null) return false;
  if (entry.proto === 'tcp' && entry.raw.includes(' ESTABLISHED ')) return false;
  const elapsed = (now - refTime) / 1000;
  return elapsed - (refTimeout - timeout) >= 2;
}

/** The full record of a kept entry, for the wire. */
export function expandConntrack(e: CompactEntry): ConntrackEntry | null {
  const parsed = parseConntrackLine(e.raw);
  return 'error' in parsed ? null : parsed;
}

export interface ConntrackLineCache {
  /** Reads `bytes` (the table as read, valid only during the call), sampled at `now` (ms). */
  parse(bytes: Buffer, now: number): { keyed: Map<string, CompactEntry>; problems: Problem[] };
}

const keyOf = sources.conntrack.keyOf;

/**
 * Works on the bytes of the read, not a string of it: a 15 MB string per
 * second would be garbage V8 collects late, and every line cut from it would
 * pin it. A line is hashed (FNV-1a) around its timer and compared, byte for
 * byte, with the line first seen for that hash; only misses become strings.
 */
export function createConntrackLineCache(): ConntrackLineCache {
  let prev = new Map<number, Cached>();
  // One string per protocol name for all entries, not one per entry.
  const protos = new Map<string, string>();
  return {
    parse(bytes, now) {
      const next = new Map<number, Cached>();
      const keyed = new Map<string, CompactEntry>();
      const problems: Problem[] = [];
      const len = bytes.length;
      let start = 0;
      let lineNo = 0;
      while (start < len) {
        let end = bytes.indexOf(10, start);
        if (end < 0) end = len;
        const lineStart = start;
        start = end + 1;
        lineNo++;
        if (end === lineStart) continue;
        const timer = timerSpanBytes(bytes, lineStart, end);
        const timeout = timer === null ? null : timer.value;
        const hash = timer === null ? hashBytes(bytes, lineStart, end, 0x811c9dc5) : hashBytes(bytes, timer.end, end, hashBytes(bytes, lineStart, timer.start, 0x811c9dc5));
        let c = prev.get(hash);
        if (c !== undefined && sameOutsideTimer(bytes, lineStart, end, timer, c)) {
          // A timer re-armed by traffic makes a fresh entry, which the diff sends as refreshed.
          if (rearmedSince(c.refTimeout, c.refTime, timeout, now, c.entry)) {
            c.entry = { ...c.entry, raw: bytes.toString('latin1', lineStart, end), timeout };
            c.refTimeout = timeout;
            c.refTime = now;
          }
        } else {
          const line = bytes.toString('latin1', lineStart, end);
          const parsed = parseConntrackLine(line);
          if ('error' in parsed) {
            if (!isConntrackToolsMessage(line)) problems.push({ line: lineNo, text: line, reason: parsed.error });
            continue;
          }
          let proto = protos.get(parsed.proto);
          if (proto === undefined) protos.set(parsed.proto, (proto = parsed.proto));
          c = {
            entry: { key: keyOf(parsed), raw: line, timeout: parsed.timeout, proto },
            timerStart: timer === null ? -1 : timer.start - lineStart,
            timerEnd: timer === null ? -1 : timer.end - lineStart,
            line,
            refTimeout: parsed.timeout,
            refTime: now,
          };
        }
        next.set(hash, c);
        if (!keyed.has(c.entry.key)) keyed.set(c.entry.key, c.entry);
      }
      prev = next;
      return { keyed, problems };
    },
  };
}

/** 30 bits, so the Map keys stay small integers rather than heap numbers. */
function hashBytes(b: Uint8Array, from: number, to: number, seed: number): number {
  let h = seed;
  for (let i = from; i < to; i++) h = Math.imul(h ^ (b[i] ?? 0), 16777619);
  return h & 0x3fffffff;
}

/** The line's bytes equal the cached line's everywhere but the timer digits. */
function sameOutsideTimer(b: Uint8Array, start: number, end: number, timer: { start: number; end: number } | null, c: Cached): boolean {
  const line = c.line;
  if (timer === null) {
    if (c.timerStart !== -1 || end - start !== line.length) return false;
    for (let i = 0; i < line.length; i++) if (b[start + i] !== line.charCodeAt(i)) return false;
    return true;
  }
  const prefixLen = timer.start - start;
  const tailLen = end - timer.end;
  if (c.timerStart !== prefixLen || line.length - c.timerEnd !== tailLen) return false;
  for (let i = 0; i < prefixLen; i++) if (b[start + i] !== line.charCodeAt(i)) return false;
  for (let i = 0; i < tailLen; i++) if (b[timer.end + i] !== line.charCodeAt(c.timerEnd + i)) return false;
  return true;
}

function withoutTimer(raw: string): string {
  const cut = timerSpan(raw);
  return cut === null ? raw : raw.slice(0, cut.start) + raw.slice(cut.end);
}

/**
 * Where the timer sits: after `l3name l3num l4name l4num` in procfs and
 * `conntrack -L -o extended`, after `l4name l4num` in plain `conntrack -L`
 * (FORMATS.md §3). Returns null when the line does not have that shape (an
 * offloaded flow has no timer).
 */
export function timerSpan(line: string): { start: number; end: number; value: number } | null {
  const bytes = new Uint8Array(line.length);
  for (let i = 0; i < line.length; i++) bytes[i] = line.charCodeAt(i) & 0xff;
  return timerSpanBytes(bytes, 0, bytes.length);
}

function timerSpanBytes(b: Uint8Array, from: number, to: number): { start: number; end: number; value: number } | null {
  let i = from;
  const skipToken = () => {
    while (i < to && b[i] !== 32) i++;
    while (i < to && b[i] === 32) i++;
  };
  if (b[from] === 91 /* [ */) skipToken(); // conntrack -E event tag
  // `ipv4 ` / `ipv6 `: procfs and -o extended print the l3 columns first.
  const l3 = b[i] === 105 && b[i + 1] === 112 && b[i + 2] === 118 && (b[i + 3] === 52 || b[i + 3] === 54) && b[i + 4] === 32;
  for (let t = 0; t < (l3 ? 4 : 2); t++) skipToken();
  const start = i;
  let value = 0;
  while (i < to) {
    const c = b[i] ?? 0;
    if (c < 48 || c > 57) break;
    value = value * 10 + (c - 48);
    i++;
  }
  if (i === start || b[i] !== 32) return null;
  return { start, end: i, value };
}

