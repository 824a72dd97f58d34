// The conntrack table is the one large source (250k entries at 1 Hz), and
// from one second to the next almost every line differs only in its
// countdown timer. So the agent keeps conntrack compact: per entry its key,
// its line (a copy, not a view of the read) and its timer, and nothing parsed. A line
// whose text after the timer was seen last tick is the same entry in the same
// state and is not parsed again; only new or changed lines are. Full records
// are made from the kept lines only when they are sent (a diff's few changed
// entries, or a snapshot chunk by chunk).
import type { ConntrackEntry } from '../contract/records.ts';
import type { Diff } from '../contract/diff.ts';
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

/** One object per entry: what is sent (CompactEntry) and what the next read is compared with. */
interface Kept extends CompactEntry {
  raw: string;
  timeout: number | null;
  /** The line as first seen, and where its timer sits (both -1 without a timer): a later line must equal it outside the timer. */
  readonly line: string;
  readonly lineHash: number;
  readonly timerStart: number;
  readonly timerEnd: number;
  /** The timer as printed when the entry was last sent, and when that was: the reference a re-arm is measured against. */
  refTimeout: number | null;
  refTime: number;
  /** The read that last saw it. */
  seen: number;
}

/** Identity and state of compact entries: the same as the contract's, read from the line. */
export const compactConntrackSpec: SourceSpec<CompactEntry> = {
  schema: { describe: 'compact conntrack entry', decode: () => ({ ok: false, error: 'compact entries never cross the wire' }) },
  keyOf: (e) => e.key,
  sameState: (a, b) => withoutTimer(a.raw) === withoutTimer(b.raw),
  // The cache reports only re-armed timers as refreshed.
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
export function rearmedSince(refTimeout: number | null, refTime: number, timeout: number | null, now: number, entry: { readonly proto: string; readonly raw: string }): boolean {
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

export interface ConntrackRead {
  /** Every entry now, by key. The same map from read to read, updated in place. */
  readonly keyed: ReadonlyMap<string, CompactEntry>;
  /** What changed since the previous read, by the rules of `compactConntrackSpec`. */
  readonly diff: Diff<CompactEntry>;
  readonly problems: Problem[];
}

export interface ConntrackReadInProgress {
  /** Whole lines of the table, in order (valid only during the call). */
  feed(lines: Buffer): void;
  finish(): ConntrackRead;
}

export interface ConntrackLineCache {
  /** Starts a read of the table sampled at `now` (ms), fed in pieces of whole lines. */
  begin(now: number): ConntrackReadInProgress;
  /** Reads the whole table at once (`conntrack -L` output, tests). */
  parse(bytes: Buffer, now: number): ConntrackRead;
}

const keyOf = sources.conntrack.keyOf;

/**
 * Works on the bytes of the read, not a string of it: a 15 MB string per
 * second would be garbage V8 collects late, and every line cut from it would
 * pin it. A line is hashed (FNV-1a) around its timer and compared, byte for
 * byte, with the line first seen for that hash; only misses become strings
 * and are parsed.
 *
 * The cache diffs as it reads, instead of handing two maps to the generic
 * keyed diff: at 250k entries, two fresh maps a second are most of the
 * agent's memory and garbage. Identity and state are the spec's: the key is
 * the original tuple and zone, the state the line outside its timer.
 */
export function createConntrackLineCache(): ConntrackLineCache {
  const byHash = new Map<number, Kept>();
  const byKey = new Map<string, Kept>();
  // One string per protocol name for all entries, not one per entry.
  const protos = new Map<string, string>();
  let read = 0;
  const begin = (now: number): ConntrackReadInProgress => {
    read++;
    const added: CompactEntry[] = [];
    const changed: CompactEntry[] = [];
    const refreshed: CompactEntry[] = [];
    const removed: string[] = [];
    const problems: Problem[] = [];
    let lineNo = 0;
    const feed = (bytes: Buffer): void => {
      const len = bytes.length;
      let start = 0;
      while (start < len) {
        let end = bytes.indexOf(10, start);
        if (end < 0) end = len;
        const lineStart = start;
        start = end + 1;
        lineNo++;
        if (end === lineStart) continue;
        const hasTimer = timerSpanBytes(bytes, lineStart, end);
        const timeout = hasTimer ? scratch.value : null;
        const tStart = scratch.start;
        const tEnd = scratch.end;
        const hash = hasTimer ? hashBytes(bytes, tEnd, end, hashBytes(bytes, lineStart, tStart, 0x811c9dc5)) : hashBytes(bytes, lineStart, end, 0x811c9dc5);
        const hit = byHash.get(hash);
        if (hit !== undefined && hit.seen !== read && sameOutsideTimer(bytes, lineStart, end, hasTimer, tStart, tEnd, hit)) {
          hit.seen = read;
          // A timer re-armed by traffic is sent as refreshed, with the line as now printed.
          if (rearmedSince(hit.refTimeout, hit.refTime, timeout, now, hit)) {
            hit.raw = bytes.toString('latin1', lineStart, end);
            hit.timeout = timeout;
            hit.refTimeout = timeout;
            hit.refTime = now;
            refreshed.push(hit);
          }
          continue;
        }
        const line = bytes.toString('latin1', lineStart, end);
        const parsed = parseConntrackLine(line);
        if ('error' in parsed) {
          if (!isConntrackToolsMessage(line)) problems.push({ line: lineNo, text: line, reason: parsed.error });
          continue;
        }
        const key = flat(keyOf(parsed));
        const before = byKey.get(key);
        // A duplicate of a key already read this time: the first one stands.
        if (before !== undefined && before.seen === read) continue;
        let proto = protos.get(parsed.proto);
        if (proto === undefined) protos.set(parsed.proto, (proto = parsed.proto));
        const kept: Kept = {
          key,
          raw: line,
          timeout: parsed.timeout,
          proto,
          line,
          lineHash: hash,
          timerStart: hasTimer ? tStart - lineStart : -1,
          timerEnd: hasTimer ? tEnd - lineStart : -1,
          refTimeout: parsed.timeout,
          refTime: now,
          seen: read,
        };
        if (before !== undefined && byHash.get(before.lineHash) === before) byHash.delete(before.lineHash);
        byKey.set(key, kept);
        // Two different lines with one hash: the later one is looked up by hash, the other is found by key.
        byHash.set(hash, kept);
        if (before === undefined) added.push(kept);
        else if (withoutTimer(before.raw) !== withoutTimer(line)) changed.push(kept);
        else if (rearmedSince(before.refTimeout, before.refTime, kept.timeout, now, kept)) refreshed.push(kept);
        else {
          // The same entry, found by key after a hash collision: keep its reference for re-arms.
          kept.raw = before.raw;
          kept.refTimeout = before.refTimeout;
          kept.refTime = before.refTime;
        }
      }
    };
    const finish = (): ConntrackRead => {
      for (const [key, kept] of byKey) {
        if (kept.seen === read) continue;
        byKey.delete(key);
        if (byHash.get(kept.lineHash) === kept) byHash.delete(kept.lineHash);
        removed.push(key);
      }
      return { keyed: byKey, diff: { added, removed, changed, refreshed }, problems };
    };
    return { feed, finish };
  };
  return {
    begin,
    parse(bytes, now) {
      const r = begin(now);
      r.feed(bytes);
      return r.finish();
    },
  };
}

/**
 * The key as one flat string. keyOf builds it by concatenation: kept as is,
 * each of 100k keys would be a tree of seven cons strings over the parsed
 * fields' own strings, about four times the size of the text.
 */
function flat(s: string): string {
  return Buffer.from(s, 'latin1').toString('latin1');
}

/** 30 bits, so the Map keys stay small integers rather than heap numbers. */
function hashBytes(b: Uint8Array, from: number, to: number, seed: number): number {
  let h = seed;
  for (let i = from; i < to; i++) h = Math.imul(h ^ (b[i] ?? 0), 16777619);
  return h & 0x3fffffff;
}

/** The line's bytes equal the kept line's everywhere but the timer digits. */
function sameOutsideTimer(b: Uint8Array, start: number, end: number, hasTimer: boolean, timerStart: number, timerEnd: number, c: Kept): boolean {
  const line = c.line;
  if (!hasTimer) {
    if (c.timerStart !== -1 || end - start !== line.length) return false;
    for (let i = 0; i < line.length; i++) if (b[start + i] !== line.charCodeAt(i)) return false;
    return true;
  }
  const prefixLen = timerStart - start;
  const tailLen = end - timerEnd;
  if (c.timerStart !== prefixLen || line.length - c.timerEnd !== tailLen) return false;
  for (let i = 0; i < prefixLen; i++) if (b[start + i] !== line.charCodeAt(i)) return false;
  for (let i = 0; i < tailLen; i++) if (b[timerEnd + i] !== line.charCodeAt(c.timerEnd + i)) return false;
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
  return timerSpanBytes(bytes, 0, bytes.length) ? { ...scratch } : null;
}

/** Where timerSpanBytes puts what it found: one object for all lines, not one per line per read. */
const scratch = { start: 0, end: 0, value: 0 };

function timerSpanBytes(b: Uint8Array, from: number, to: number): boolean {
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
  if (i === start || b[i] !== 32) return false;
  scratch.start = start;
  scratch.end = i;
  scratch.value = value;
  return true;
}
