// The conntrack table is the one large source (250k entries at 1 Hz), and
// from one second to the next almost every line differs only in its
// countdown timer. So the agent keeps conntrack compact and mostly off the
// JavaScript heap: every entry's line in a byte arena, and per entry a few
// numbers in typed-array columns (where its line sits, where its timer sits,
// hashes, the timer reference). A line whose bytes outside the timer equal
// the kept line is the same entry in the same state and is not parsed again;
// only new or changed lines are. Full records are made from the kept lines
// only when they are sent (a diff's few changed entries, or a snapshot chunk
// by chunk).
import type { ConntrackEntry } from '../contract/records.ts';
import type { Diff } from '../contract/diff.ts';
import { sources, type Problem, type SourceSpec } from '../contract/sources.ts';
import { isConntrackToolsMessage, parseConntrackLine } from './sources/conntrack.ts';

/** A conntrack entry as handed out for sending. */
export interface CompactEntry {
  readonly key: string;
  /** The line as printed when this entry was last sent; its timer may have counted down since. */
  readonly raw: string;
  readonly timeout: number | null;
  readonly proto: string;
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
  return rearmed(refTimeout, refTime, timeout, now, entry.proto === 'tcp' && entry.raw.includes(' ESTABLISHED '));
}

function rearmed(refTimeout: number | null, refTime: number, timeout: number | null, now: number, establishedTcp: boolean): boolean {
  if (refTimeout === null || timeout === null || establishedTcp) return false;
  const elapsed = (now - refTime) / 1000;
  return elapsed - (refTimeout - timeout) >= 2;
}

/** The full record of a kept entry, for the wire. */
export function expandConntrack(e: CompactEntry): ConntrackEntry | null {
  const parsed = parseConntrackLine(e.raw);
  return 'error' in parsed ? null : parsed;
}

export interface ConntrackRead {
  /** Every entry now, by key: a view of the cache, valid until the next read. */
  readonly keyed: ReadonlyMap<string, CompactEntry>;
  /** The first read after a reset: `diff` holds every entry as added, and the receiver should resynchronise instead. */
  readonly restarted: boolean;
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
  /**
   * Forgets everything: after a read that failed half way, the kept entries
   * no longer match what was reported. The next read says it `restarted`.
   */
  reset(): void;
}

const keyOf = sources.conntrack.keyOf;
const NONE = -1;
/** Lines longer than this are not kept (procfs lines are under 400 bytes); they are reported as problems. */
const MAX_LINE = 0xfffe;

/** Per-entry numbers, one typed array each, indexed by slot. */
class Columns {
  capacity = 0;
  offset = new Uint32Array(0);
  length = new Uint16Array(0);
  /** Timer digits within the line; NONE without a timer. */
  timerStart = new Int32Array(0);
  timerEnd = new Int32Array(0);
  lineHash = new Int32Array(0);
  keyHash = new Int32Array(0);
  /** Timer as printed when last sent, and the reference a re-arm is measured against; NONE for none. */
  timeout = new Int32Array(0);
  refTimeout = new Int32Array(0);
  refTime = new Float64Array(0);
  /** The read that last saw it; 0 for a free slot. */
  seen = new Uint32Array(0);
  proto = new Uint8Array(0);
  /** TCP in ESTABLISHED: never reported as refreshed. */
  established = new Uint8Array(0);

  grow(min: number): void {
    const capacity = Math.max(min, Math.ceil(this.capacity * 1.5), 1024);
    const grow = <A extends Uint32Array | Uint16Array | Int32Array | Float64Array | Uint8Array>(a: A, make: (n: number) => A): A => {
      const b = make(capacity);
      b.set(a as never);
      return b;
    };
    this.offset = grow(this.offset, (n) => new Uint32Array(n));
    this.length = grow(this.length, (n) => new Uint16Array(n));
    this.timerStart = grow(this.timerStart, (n) => new Int32Array(n));
    this.timerEnd = grow(this.timerEnd, (n) => new Int32Array(n));
    this.lineHash = grow(this.lineHash, (n) => new Int32Array(n));
    this.keyHash = grow(this.keyHash, (n) => new Int32Array(n));
    this.timeout = grow(this.timeout, (n) => new Int32Array(n));
    this.refTimeout = grow(this.refTimeout, (n) => new Int32Array(n));
    this.refTime = grow(this.refTime, (n) => new Float64Array(n));
    this.seen = grow(this.seen, (n) => new Uint32Array(n));
    this.proto = grow(this.proto, (n) => new Uint8Array(n));
    this.established = grow(this.established, (n) => new Uint8Array(n));
    this.capacity = capacity;
  }
}

const BLOCK_BITS = 20;
const BLOCK = 1 << BLOCK_BITS;

/**
 * Every kept line, in 1 MiB blocks: growing never copies (no second arena
 * alive while a big table is first read), and a line never spans two blocks.
 * An offset is block << 20 | position. Lines that are replaced or removed
 * leave garbage, compacted away into fresh blocks once it outweighs the rest.
 */
class Arena {
  blocks: Buffer[] = [];
  /** Bytes used in the last block. */
  used = BLOCK;
  total = 0;
  garbage = 0;

  add(from: Uint8Array, start: number, end: number, cols: Columns, live: () => Iterable<number>): number {
    const len = end - start;
    if (this.used + len > BLOCK) {
      if (this.garbage > BLOCK && this.garbage * 2 > this.total) this.#compact(cols, live);
      if (this.used + len > BLOCK) this.#newBlock();
    }
    const block = this.blocks.length - 1;
    const at = this.used;
    (this.blocks[block] as Buffer).set(from.subarray(start, end), at);
    this.used += len;
    this.total += len;
    return (block << BLOCK_BITS) | at;
  }

  block(offset: number): Buffer {
    return this.blocks[offset >>> BLOCK_BITS] as Buffer;
  }

  #newBlock(): void {
    // Outside Node's shared pool: each block is its own allocation, freed with it.
    this.blocks.push(Buffer.allocUnsafeSlow(BLOCK));
    this.used = 0;
  }

  #compact(cols: Columns, live: () => Iterable<number>): void {
    const old = this.blocks;
    this.blocks = [];
    this.used = BLOCK;
    this.total = 0;
    this.garbage = 0;
    for (const slot of live()) {
      const off = cols.offset[slot] ?? 0;
      const len = cols.length[slot] ?? 0;
      const pos = off & (BLOCK - 1);
      cols.offset[slot] = this.add((old[off >>> BLOCK_BITS] as Buffer), pos, pos + len, cols, () => []);
    }
  }
}

/** What a SlotEntry reads its fields through. */
interface SlotReader {
  lineOf(slot: number): string;
  keyOfSlot(slot: number): string;
  timeoutOf(slot: number): number | null;
  protoOf(slot: number): string;
}

/**
 * An entry handed out by the cache, read from its slot when asked: a first
 * read of 100k entries hands out 100k of these, not 100k copies of their
 * lines. Valid until the next read.
 */
class SlotEntry implements CompactEntry {
  readonly #slot: number;
  readonly #key: string | null;
  readonly #reader: SlotReader;
  constructor(reader: SlotReader, slot: number, key: string | null) {
    this.#reader = reader;
    this.#slot = slot;
    this.#key = key;
  }
  get key(): string {
    return this.#key ?? this.#reader.keyOfSlot(this.#slot);
  }
  get raw(): string {
    return this.#reader.lineOf(this.#slot);
  }
  get timeout(): number | null {
    return this.#reader.timeoutOf(this.#slot);
  }
  get proto(): string {
    return this.#reader.protoOf(this.#slot);
  }
}

/**
 * Reads the table from its bytes, never as one string. A line is hashed
 * (FNV-1a) around its timer and compared, byte for byte, with the kept line
 * of that hash; only misses become strings and are parsed.
 *
 * The cache diffs as it reads, instead of handing two maps to the generic
 * keyed diff: at 250k entries, two fresh maps a second would be most of the
 * agent's memory and garbage. Identity and state are the spec's: the key is
 * the original tuple and zone, the state the line outside its timer.
 */
export function createConntrackLineCache(): ConntrackLineCache {
  let cols = new Columns();
  let arena = new Arena();
  let byHash = new Map<number, number>();
  /** Key hash → slot, or slots when two keys share a hash. */
  let byKey = new Map<number, number | number[]>();
  let free: number[] = [];
  let nextSlot = 0;
  let liveCount = 0;
  let restarted = false;
  const protos: string[] = [];
  let read = 0;

  const liveSlots = function* (): Generator<number> {
    for (let s = 0; s < nextSlot; s++) if (cols.seen[s] !== 0) yield s;
  };
  const lineOf = (slot: number): string => {
    const off = cols.offset[slot] ?? 0;
    const pos = off & (BLOCK - 1);
    return arena.block(off).toString('latin1', pos, pos + (cols.length[slot] ?? 0));
  };
  const keyOfSlot = (slot: number): string => {
    const parsed = parseConntrackLine(lineOf(slot));
    return 'error' in parsed ? '' : keyOf(parsed);
  };
  const timeoutOf = (slot: number): number | null => ((cols.timeout[slot] ?? NONE) === NONE ? null : (cols.timeout[slot] ?? null));
  const entryOf = (slot: number, key: string): CompactEntry => ({ key, raw: lineOf(slot), timeout: timeoutOf(slot), proto: protos[cols.proto[slot] ?? 0] ?? '' });
  const slotsWithKeyHash = (h: number): readonly number[] => {
    const b = byKey.get(h);
    return b === undefined ? [] : typeof b === 'number' ? [b] : b;
  };
  const findKey = (key: string, h: number): number | undefined => {
    for (const s of slotsWithKeyHash(h)) if (keyOfSlot(s) === key) return s;
    return undefined;
  };
  const release = (slot: number): void => {
    if (byHash.get(cols.lineHash[slot] ?? 0) === slot) byHash.delete(cols.lineHash[slot] ?? 0);
    const h = cols.keyHash[slot] ?? 0;
    const rest = slotsWithKeyHash(h).filter((s) => s !== slot);
    if (rest.length === 0) byKey.delete(h);
    else byKey.set(h, rest.length === 1 ? (rest[0] ?? 0) : rest);
    arena.garbage += cols.length[slot] ?? 0;
    cols.seen[slot] = 0;
    free.push(slot);
    liveCount--;
  };
  const protoIndex = (proto: string): number => {
    let i = protos.indexOf(proto);
    if (i < 0) i = protos.push(proto) - 1;
    return i;
  };

  const reader: SlotReader = { lineOf, keyOfSlot, timeoutOf, protoOf: (slot) => protos[cols.proto[slot] ?? 0] ?? '' };

  /** A ReadonlyMap over the kept entries, made on demand: the agent iterates it for snapshots. */
  const view: ReadonlyMap<string, CompactEntry> = {
    get size() {
      return liveCount;
    },
    get(key: string) {
      const s = findKey(key, hashString(key));
      return s === undefined ? undefined : entryOf(s, key);
    },
    has(key: string) {
      return findKey(key, hashString(key)) !== undefined;
    },
    *entries(): MapIterator<[string, CompactEntry]> {
      for (const s of liveSlots()) {
        const key = keyOfSlot(s);
        yield [key, entryOf(s, key)];
      }
    },
    *keys(): MapIterator<string> {
      for (const s of liveSlots()) yield keyOfSlot(s);
    },
    *values(): MapIterator<CompactEntry> {
      for (const s of liveSlots()) yield new SlotEntry(reader, s, null);
    },
    forEach(fn: (value: CompactEntry, key: string, map: ReadonlyMap<string, CompactEntry>) => void) {
      for (const [k, v] of view.entries()) fn(v, k, view);
    },
    [Symbol.iterator]() {
      return view.entries();
    },
  };

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
        const tStart = hasTimer ? scratch.start - lineStart : NONE;
        const tEnd = hasTimer ? scratch.end - lineStart : NONE;
        const hash = hasTimer ? hashBytes(bytes, lineStart + tEnd, end, hashBytes(bytes, lineStart, lineStart + tStart, 0x811c9dc5)) : hashBytes(bytes, lineStart, end, 0x811c9dc5);
        const hit = byHash.get(hash);
        if (hit !== undefined && cols.seen[hit] !== read && sameOutsideTimer(bytes, lineStart, end, tStart, tEnd, hit)) {
          cols.seen[hit] = read;
          const ref = cols.refTimeout[hit] ?? NONE;
          // A timer re-armed by traffic is sent as refreshed, with the line as now printed.
          if (rearmed(ref === NONE ? null : ref, cols.refTime[hit] ?? 0, timeout, now, cols.established[hit] === 1)) {
            arena.garbage += cols.length[hit] ?? 0;
            cols.offset[hit] = arena.add(bytes, lineStart, end, cols, liveSlots);
            cols.length[hit] = end - lineStart;
            cols.timerEnd[hit] = tEnd;
            cols.timeout[hit] = timeout ?? NONE;
            cols.refTimeout[hit] = timeout ?? NONE;
            cols.refTime[hit] = now;
            refreshed.push(new SlotEntry(reader, hit, null));
          }
          continue;
        }
        const line = bytes.toString('latin1', lineStart, end);
        const parsed = parseConntrackLine(line);
        if ('error' in parsed || end - lineStart > MAX_LINE) {
          if (!isConntrackToolsMessage(line)) problems.push({ line: lineNo, text: line, reason: 'error' in parsed ? parsed.error : `line longer than ${MAX_LINE} bytes` });
          continue;
        }
        const key = keyOf(parsed);
        const keyHash = hashString(key);
        const before = findKey(key, keyHash);
        // A duplicate of a key already read this time: the first one stands.
        if (before !== undefined && cols.seen[before] === read) continue;
        const slot = free.pop() ?? nextSlot++;
        if (slot >= cols.capacity) cols.grow(slot + 1);
        liveCount++;
        cols.offset[slot] = arena.add(bytes, lineStart, end, cols, liveSlots);
        cols.length[slot] = end - lineStart;
        cols.timerStart[slot] = tStart;
        cols.timerEnd[slot] = tEnd;
        cols.lineHash[slot] = hash;
        cols.keyHash[slot] = keyHash;
        cols.timeout[slot] = parsed.timeout ?? NONE;
        cols.refTimeout[slot] = parsed.timeout ?? NONE;
        cols.refTime[slot] = now;
        cols.seen[slot] = read;
        cols.proto[slot] = protoIndex(parsed.proto);
        cols.established[slot] = parsed.proto === 'tcp' && parsed.state === 'ESTABLISHED' ? 1 : 0;
        if (before === undefined) {
          added.push(new SlotEntry(reader, slot, null));
        } else {
          const beforeLine = lineOf(before);
          const beforeRef = cols.refTimeout[before] ?? NONE;
          if (withoutTimer(beforeLine) !== withoutTimer(line)) changed.push(new SlotEntry(reader, slot, key));
          else if (rearmed(beforeRef === NONE ? null : beforeRef, cols.refTime[before] ?? 0, parsed.timeout, now, cols.established[slot] === 1)) refreshed.push(new SlotEntry(reader, slot, key));
          else {
            // The same entry, found by key after a hash collision: its reference for re-arms carries over.
            cols.timeout[slot] = cols.timeout[before] ?? NONE;
            cols.refTimeout[slot] = beforeRef;
            cols.refTime[slot] = cols.refTime[before] ?? now;
          }
          release(before);
        }
        const slots = slotsWithKeyHash(keyHash);
        byKey.set(keyHash, slots.length === 0 ? slot : [...slots, slot]);
        // Two different lines with one hash: the later one is looked up by hash, the other is found by key.
        byHash.set(hash, slot);
      }
    };
    const finish = (): ConntrackRead => {
      for (let s = 0; s < nextSlot; s++) {
        const seen = cols.seen[s] ?? 0;
        if (seen === 0 || seen === read) continue;
        removed.push(keyOfSlot(s));
        release(s);
      }
      const wasRestarted = restarted;
      restarted = false;
      return { keyed: view, restarted: wasRestarted, diff: { added, removed, changed, refreshed }, problems };
    };
    return { feed, finish };
  };

  /** The line's bytes equal the kept line's everywhere but the timer digits. */
  function sameOutsideTimer(b: Buffer, start: number, end: number, tStart: number, tEnd: number, slot: number): boolean {
    const off = cols.offset[slot] ?? 0;
    const kept = arena.block(off);
    const pos = off & (BLOCK - 1);
    const keptLen = cols.length[slot] ?? 0;
    const keptStart = cols.timerStart[slot] ?? NONE;
    if (tStart === NONE) return keptStart === NONE && end - start === keptLen && b.compare(kept, pos, pos + keptLen, start, end) === 0;
    const keptEnd = cols.timerEnd[slot] ?? NONE;
    if (keptStart !== tStart || keptLen - keptEnd !== end - start - tEnd) return false;
    return b.compare(kept, pos, pos + keptStart, start, start + tStart) === 0 && b.compare(kept, pos + keptEnd, pos + keptLen, start + tEnd, end) === 0;
  }

  return {
    begin,
    parse(bytes, now) {
      const r = begin(now);
      r.feed(bytes);
      return r.finish();
    },
    reset() {
      cols = new Columns();
      arena = new Arena();
      byHash = new Map();
      byKey = new Map();
      free = [];
      nextSlot = 0;
      liveCount = 0;
      restarted = true;
    },
  };
}

/** 30 bits, so the Map keys stay small integers rather than heap numbers. */
function hashBytes(b: Uint8Array, from: number, to: number, seed: number): number {
  let h = seed;
  for (let i = from; i < to; i++) h = Math.imul(h ^ (b[i] ?? 0), 16777619);
  return h & 0x3fffffff;
}

function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h & 0x3fffffff;
}

function withoutTimer(raw: string): string {
  const cut = timerSpan(raw);
  return cut === null ? raw : raw.slice(0, cut.start) + raw.slice(cut.end);
}
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
