// The conntrack table is the one large source (250k entries at 1 Hz), and
// from one second to the next almost every line differs only in its
// countdown timer. So the agent keeps conntrack compact and off the
// JavaScript heap: every entry's line, packed (./conntrack-packing.ts), in a
// byte arena, and per entry a few
// numbers in typed-array columns (where its line sits, where its timer sits,
// hashes, the timer reference); even the hash indexes are typed arrays, with
// their chains threaded through columns. A line whose bytes equal the kept
// line outside its volatile numbers (the timer, and with nf_conntrack_acct
// or timestamps the counters, delta-time and use=, which move every second
// on a busy flow) is the same entry in the same state and is not parsed
// again. Any other line is parsed, and whether it changed is the contract's
// sameState, never the bytes: a line can differ in ways the contract does
// not count as a change. Full records are made from the kept lines only when
// they are sent (a diff's few changed entries, or a snapshot chunk by
// chunk), and a read's diff only when it is asked for.
import type { ConntrackEntry } from '../contract/records.ts';
import type { Diff } from '../contract/diff.ts';
import { conntrackRearmedSince, sources, type Problem, type SourceSpec } from '../contract/sources.ts';
import { isConntrackToolsMessage, parseConntrackLine } from './sources/conntrack.ts';
import { pack, samePacked, samePackedOutsideVolatile, unpack, volatileKeyEnd } from './conntrack-packing.ts';

/** A conntrack entry as handed out for sending. */
export interface CompactEntry {
  readonly key: string;
  /** The line as printed when this entry was last sent; its timer may have counted down since. */
  readonly raw: string;
  /** The timer in `raw`. */
  readonly timeout: number | null;
  readonly proto: string;
}

/**
 * Identity and state of compact entries: the contract's, on the records
 * their lines parse to. The cache's own diff follows the same rules (and
 * measures re-arms against a reference, which a pair of entries cannot).
 */
export const compactConntrackSpec: SourceSpec<CompactEntry> = {
  schema: { describe: 'compact conntrack entry', decode: () => ({ ok: false, error: 'compact entries never cross the wire' }) },
  keyOf: (e) => e.key,
  sameState: (a, b) => {
    const [pa, pb] = [expandConntrack(a), expandConntrack(b)];
    return pa !== null && pb !== null ? contract.sameState(pa, pb) : a.raw === b.raw;
  },
  refreshed: (a, b) => {
    const [pa, pb] = [expandConntrack(a), expandConntrack(b)];
    return pa !== null && pb !== null && contract.refreshed !== undefined && contract.refreshed(pa, pb);
  },
};

const contract = sources.conntrack;
const rearmed = conntrackRearmedSince;

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
  /**
   * What changed since the previous read, by the rules of `compactConntrackSpec`.
   * Made when first asked for, and only until the next read: a caller about
   * to send a snapshot never asks, and the first read of a big table would
   * otherwise hand out every entry as added.
   */
  readonly diff: Diff<CompactEntry>;
  readonly problems: Problem[];
}

export interface ConntrackReadInProgress {
  /** Whole lines of the table, in order (valid only during the call). */
  feed(lines: Buffer): void;
  finish(): ConntrackRead;
}

export interface ConntrackLineCache {
  /**
   * Starts a read of the table sampled at `now` (ms), fed in pieces of whole
   * lines. `expected`: about how many entries the table holds
   * (nf_conntrack_count), so that a big first read makes room once instead
   * of growing its columns a dozen times (each old copy is garbage until V8
   * collects it).
   */
  begin(now: number, expected?: number): ConntrackReadInProgress;
  /** Reads the whole table at once (`conntrack -L` output, tests). */
  parse(bytes: Buffer, now: number): ConntrackRead;
  /**
   * Forgets everything: after a read that failed half way, the kept entries
   * no longer match what was reported. The next read says it `restarted`.
   */
  reset(): void;
}

const keyOf = contract.keyOf;
/** No slot (end of a hash chain), or no timer reference, in Int32 columns. */
const NONE = -1;
/** No timer in the line, in the Uint16 timer columns. */
const NO_TIMER = 0xffff;
/** Lines longer than this are not kept (procfs lines are under 400 bytes); they are reported as problems. */
const MAX_LINE = 0xfffe;

/** `flags`: TCP in ESTABLISHED, never reported as refreshed. */
const ESTABLISHED = 1;
/** `flags`: the line is kept as read, not packed. */
const VERBATIM = 2;

/** Per-entry numbers, one typed array each, indexed by slot: about 46 bytes an entry, none of them on the V8 heap. */
class Columns {
  capacity = 0;
  /** Where the packed line sits in the arena, and its packed length. */
  offset = new Uint32Array(0);
  length = new Uint16Array(0);
  /** The line's length as read. */
  lineLength = new Uint16Array(0);
  /** Timer digits within the line as read; NO_TIMER without a timer. */
  timerStart = new Uint16Array(0);
  timerEnd = new Uint16Array(0);
  /** Where the timer digits (never packed) start in the packed line. */
  packedTimer = new Uint16Array(0);
  /** The line's hash outside its timer, and the next slot in its bucket of `byLine`. */
  lineHash = new Int32Array(0);
  nextByLine = new Int32Array(0);
  /** The key's hash, and the next slot in its bucket of `byKey`. */
  keyHash = new Int32Array(0);
  nextByKey = new Int32Array(0);
  /** The timer a re-arm is measured against, and when it was seen; NONE for none. */
  refTimeout = new Int32Array(0);
  refTime = new Float64Array(0);
  /** The read that last saw it; 0 for a free slot. */
  seen = new Uint32Array(0);
  proto = new Uint8Array(0);
  flags = new Uint8Array(0);

  grow(min: number): void {
    // By a quarter: the columns live as long as the agent, and the table rarely jumps.
    const capacity = Math.max(min, Math.ceil(this.capacity * 1.25), 1024);
    const grow = <A extends Uint32Array | Uint16Array | Int32Array | Float64Array | Uint8Array>(a: A, make: (n: number) => A): A => {
      const b = make(capacity);
      b.set(a);
      return b;
    };
    this.offset = grow(this.offset, (n) => new Uint32Array(n));
    this.length = grow(this.length, (n) => new Uint16Array(n));
    this.lineLength = grow(this.lineLength, (n) => new Uint16Array(n));
    this.timerStart = grow(this.timerStart, (n) => new Uint16Array(n));
    this.timerEnd = grow(this.timerEnd, (n) => new Uint16Array(n));
    this.packedTimer = grow(this.packedTimer, (n) => new Uint16Array(n));
    this.lineHash = grow(this.lineHash, (n) => new Int32Array(n));
    this.nextByLine = grow(this.nextByLine, (n) => new Int32Array(n));
    this.keyHash = grow(this.keyHash, (n) => new Int32Array(n));
    this.nextByKey = grow(this.nextByKey, (n) => new Int32Array(n));
    this.refTimeout = grow(this.refTimeout, (n) => new Int32Array(n));
    this.refTime = grow(this.refTime, (n) => new Float64Array(n));
    this.seen = grow(this.seen, (n) => new Uint32Array(n));
    this.proto = grow(this.proto, (n) => new Uint8Array(n));
    this.flags = grow(this.flags, (n) => new Uint8Array(n));
    this.capacity = capacity;
  }
}

/** A growable list of slots: a read's added/changed/refreshed/removed entries, the free slots. */
class SlotList {
  items = new Int32Array(64);
  size = 0;

  push(slot: number): void {
    if (this.size === this.items.length) {
      const bigger = new Int32Array(this.items.length * 2);
      bigger.set(this.items);
      this.items = bigger;
    }
    this.items[this.size++] = slot;
  }

  /** The last slot pushed, removed; NONE when empty. */
  pop(): number {
    return this.size === 0 ? NONE : (this.items[--this.size] ?? NONE);
  }

  map<T>(fn: (slot: number) => T): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.size; i++) out.push(fn(this.items[i] ?? 0));
    return out;
  }
}

const BLOCK_BITS = 20;
const BLOCK = 1 << BLOCK_BITS;

/**
 * Every kept line, in 1 MiB blocks: growing never copies (no second arena
 * alive while a big table is first read), and a line never spans two blocks.
 * An offset is block << 20 | position. Lines that are replaced or removed
 * leave garbage, which `compact` slides the live lines over, in place.
 */
class Arena {
  blocks: Buffer[] = [];
  /** Bytes used in the last block. */
  used = BLOCK;
  total = 0;
  garbage = 0;

  add(from: Uint8Array, start: number, end: number): number {
    const len = end - start;
    if (this.used + len > BLOCK) {
      // Outside Node's shared pool: each block is its own allocation, freed with it.
      this.blocks.push(Buffer.allocUnsafeSlow(BLOCK));
      this.used = 0;
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

  /**
   * Moves the lines of `live` slots down over the garbage, in arena order,
   * within the blocks already held (a compacted line never lands past where
   * it was, so nothing is overwritten before it is moved), then drops the
   * blocks left empty. No second arena: memory only goes down.
   */
  compact(cols: Columns, live: Uint32Array): void {
    const offset = cols.offset;
    live.sort((a, b) => (offset[a] ?? 0) - (offset[b] ?? 0));
    let block = 0;
    let at = 0;
    let total = 0;
    for (const slot of live) {
      const from = offset[slot] ?? 0;
      const len = cols.length[slot] ?? 0;
      const fromBlock = from >>> BLOCK_BITS;
      const fromAt = from & (BLOCK - 1);
      if (at + len > BLOCK) {
        block++;
        at = 0;
      }
      const src = this.blocks[fromBlock] as Buffer;
      if (block === fromBlock) {
        if (at !== fromAt) src.copyWithin(at, fromAt, fromAt + len);
      } else (this.blocks[block] as Buffer).set(src.subarray(fromAt, fromAt + len), at);
      offset[slot] = (block << BLOCK_BITS) | at;
      at += len;
      total += len;
    }
    if (live.length === 0) {
      this.blocks = [];
      this.used = BLOCK;
    } else {
      this.blocks.length = block + 1;
      this.used = at;
    }
    this.total = total;
    this.garbage = 0;
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
 * An entry handed out by the cache, read from its slot when asked: a
 * snapshot of 100k entries makes these one chunk at a time, not 100k copies
 * of their lines. Valid until the next read.
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

/** Puts `slot` at the head of its hash's bucket. */
function link(heads: Int32Array, next: Int32Array, slot: number, hash: number): void {
  const bucket = hash & (heads.length - 1);
  next[slot] = heads[bucket] ?? NONE;
  heads[bucket] = slot;
}

function unlink(heads: Int32Array, next: Int32Array, slot: number, hash: number): void {
  const bucket = hash & (heads.length - 1);
  let s = heads[bucket] ?? NONE;
  if (s === slot) {
    heads[bucket] = next[slot] ?? NONE;
    return;
  }
  while (s !== NONE) {
    const after = next[s] ?? NONE;
    if (after === slot) {
      next[s] = next[slot] ?? NONE;
      return;
    }
    s = after;
  }
}

/**
 * Reads the table from its bytes, never as one string. A line is hashed
 * (FNV-1a) around its timer and compared, byte for byte, with the kept lines
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
  /** Bucket heads (a power of two of them, at least one per slot), chained through `nextByLine` / `nextByKey`. */
  let byLine = new Int32Array(0);
  let byKey = new Int32Array(0);
  let free = new SlotList();
  let nextSlot = 0;
  let liveCount = 0;
  let restarted = false;
  const protos: string[] = [];
  let read = 0;
  /** Bumped by every read and reset: what a read handed out is valid only while it stands. */
  let epoch = 0;
  /** A line being packed or unpacked: packing never lengthens, so MAX_LINE bytes hold any kept line. */
  const lineBuf = Buffer.allocUnsafeSlow(MAX_LINE);

  const liveSlots = function* (): Generator<number> {
    for (let s = 0; s < nextSlot; s++) if (cols.seen[s] !== 0) yield s;
  };
  const lineOf = (slot: number): string => {
    const off = cols.offset[slot] ?? 0;
    const pos = off & (BLOCK - 1);
    const block = arena.block(off);
    const len = cols.length[slot] ?? 0;
    if (((cols.flags[slot] ?? 0) & VERBATIM) !== 0) return block.toString('latin1', pos, pos + len);
    return lineBuf.toString('latin1', 0, unpack(block, pos, pos + len, lineBuf, 0));
  };
  const keyOfSlot = (slot: number): string => {
    const parsed = parseConntrackLine(lineOf(slot));
    return 'error' in parsed ? '' : keyOf(parsed);
  };
  const timeoutOf = (slot: number): number | null => {
    const start = cols.timerStart[slot] ?? NO_TIMER;
    if (start === NO_TIMER) return null;
    const off = cols.offset[slot] ?? 0;
    const b = arena.block(off);
    const from = (off & (BLOCK - 1)) + (cols.packedTimer[slot] ?? 0);
    const to = from + (cols.timerEnd[slot] ?? start) - start;
    let value = 0;
    for (let i = from; i < to; i++) value = value * 10 + ((b[i] ?? 48) - 48);
    return value;
  };
  const protoOf = (slot: number): string => protos[cols.proto[slot] ?? 0] ?? '';
  const reader: SlotReader = { lineOf, keyOfSlot, timeoutOf, protoOf };

  const findKey = (key: string, h: number): number => {
    if (byKey.length === 0) return NONE;
    for (let s = byKey[h & (byKey.length - 1)] ?? NONE; s !== NONE; s = cols.nextByKey[s] ?? NONE) if (cols.keyHash[s] === h && keyOfSlot(s) === key) return s;
    return NONE;
  };
  /** Grows the columns to hold `slot`, and the indexes with them. */
  const makeRoom = (slot: number): void => {
    cols.grow(slot + 1);
    if (byLine.length >= cols.capacity) return;
    let size = 1024;
    while (size < cols.capacity) size *= 2;
    byLine = new Int32Array(size).fill(NONE);
    byKey = new Int32Array(size).fill(NONE);
    for (let s = 0; s < nextSlot; s++) {
      if (cols.seen[s] === 0) continue;
      link(byLine, cols.nextByLine, s, cols.lineHash[s] ?? 0);
      link(byKey, cols.nextByKey, s, cols.keyHash[s] ?? 0);
    }
  };
  const release = (slot: number): void => {
    unlink(byLine, cols.nextByLine, slot, cols.lineHash[slot] ?? 0);
    unlink(byKey, cols.nextByKey, slot, cols.keyHash[slot] ?? 0);
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
  /** Keeps `b[start, end)` as the slot's line: packed around its timer, whose digits stay as they are. */
  const keepLine = (slot: number, b: Buffer, start: number, end: number, tStart: number, tEnd: number): void => {
    const hasTimer = tStart !== NO_TIMER;
    let n = pack(b, start, hasTimer ? start + tStart : end, lineBuf, 0);
    const packedTimer = n;
    if (n >= 0 && hasTimer) {
      b.copy(lineBuf, n, start + tStart, start + tEnd);
      n = pack(b, start + tEnd, end, lineBuf, n + tEnd - tStart);
    }
    const verbatim = n < 0;
    cols.offset[slot] = verbatim ? arena.add(b, start, end) : arena.add(lineBuf, 0, n);
    cols.length[slot] = verbatim ? end - start : n;
    cols.lineLength[slot] = end - start;
    cols.timerStart[slot] = tStart;
    cols.timerEnd[slot] = tEnd;
    cols.packedTimer[slot] = verbatim ? tStart : packedTimer;
    cols.flags[slot] = verbatim ? (cols.flags[slot] ?? 0) | VERBATIM : (cols.flags[slot] ?? 0) & ~VERBATIM;
  };

  /** A ReadonlyMap over the kept entries, made on demand: the agent iterates it for snapshots. */
  const view: ReadonlyMap<string, CompactEntry> = {
    get size() {
      return liveCount;
    },
    get(key: string) {
      const s = findKey(key, hashString(key));
      return s === NONE ? undefined : new SlotEntry(reader, s, key);
    },
    has(key: string) {
      return findKey(key, hashString(key)) !== NONE;
    },
    *entries(): MapIterator<[string, CompactEntry]> {
      for (const s of liveSlots()) {
        const key = keyOfSlot(s);
        yield [key, new SlotEntry(reader, s, key)];
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

  const begin = (now: number, expected = 0): ConntrackReadInProgress => {
    read++;
    const thisEpoch = ++epoch;
    // An eighth more, for entries made while the table is read.
    if (expected > cols.capacity) makeRoom(expected + (expected >> 3));
    // Between reads every slot still seen is live: the one time lines may move.
    // A quarter of garbage bounds the arena at 4/3 of the live lines.
    if (arena.garbage > BLOCK && arena.garbage * 4 > arena.total) {
      const live = new Uint32Array(liveCount);
      let n = 0;
      for (let s = 0; s < nextSlot; s++) if (cols.seen[s] !== 0) live[n++] = s;
      arena.compact(cols, live);
    }
    const added = new SlotList();
    const changed = new SlotList();
    const refreshed = new SlotList();
    const removed = new SlotList();
    const problems: Problem[] = [];
    let lineNo = 0;

    /** The kept slot whose line equals these bytes outside its volatile numbers and that this read has not seen yet; NONE if none. */
    const findLine = (b: Buffer, start: number, end: number, tStart: number, tEnd: number, hash: number): number => {
      if (byLine.length === 0) return NONE;
      for (let s = byLine[hash & (byLine.length - 1)] ?? NONE; s !== NONE; s = cols.nextByLine[s] ?? NONE)
        if (cols.lineHash[s] === hash && cols.seen[s] !== read && sameOutsideVolatile(b, start, end, tStart, tEnd, s)) return s;
      return NONE;
    };

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
        const tStart = hasTimer ? scratch.start - lineStart : NO_TIMER;
        const tEnd = hasTimer ? scratch.end - lineStart : NO_TIMER;
        const hash = hasTimer ? hashOutsideVolatile(bytes, lineStart + tEnd, end, hashBytes(bytes, lineStart, lineStart + tStart, 0x811c9dc5)) : hashOutsideVolatile(bytes, lineStart, end, 0x811c9dc5);
        const hit = findLine(bytes, lineStart, end, tStart, tEnd, hash);
        if (hit !== NONE) {
          cols.seen[hit] = read;
          const ref = cols.refTimeout[hit] ?? NONE;
          // A timer re-armed by traffic is sent as refreshed, with the line as now printed.
          if (rearmed(ref === NONE ? null : ref, cols.refTime[hit] ?? 0, timeout, now, ((cols.flags[hit] ?? 0) & ESTABLISHED) !== 0)) {
            arena.garbage += cols.length[hit] ?? 0;
            keepLine(hit, bytes, lineStart, end, tStart, tEnd);
            cols.refTimeout[hit] = timeout ?? NONE;
            cols.refTime[hit] = now;
            refreshed.push(hit);
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
        if (before !== NONE && cols.seen[before] === read) continue;
        let slot = free.pop();
        if (slot === NONE) slot = nextSlot++;
        if (slot >= cols.capacity) makeRoom(slot);
        liveCount++;
        cols.flags[slot] = parsed.proto === 'tcp' && parsed.state === 'ESTABLISHED' ? ESTABLISHED : 0;
        keepLine(slot, bytes, lineStart, end, tStart, tEnd);
        cols.lineHash[slot] = hash;
        cols.keyHash[slot] = keyHash;
        cols.refTimeout[slot] = parsed.timeout ?? NONE;
        cols.refTime[slot] = now;
        cols.seen[slot] = read;
        cols.proto[slot] = protoIndex(parsed.proto);
        if (before === NONE) {
          added.push(slot);
        } else {
          const beforeRef = cols.refTimeout[before] ?? NONE;
          // Whether it changed is the contract's to say, on both lines parsed.
          const kept = parseConntrackLine(lineOf(before));
          if ('error' in kept || !contract.sameState(kept, parsed)) changed.push(slot);
          else if (rearmed(beforeRef === NONE ? null : beforeRef, cols.refTime[before] ?? 0, parsed.timeout, now, ((cols.flags[slot] ?? 0) & ESTABLISHED) !== 0)) refreshed.push(slot);
          else {
            // The same entry in the same state (its line differs in what the contract ignores, or its hash collided): its reference for re-arms carries over.
            cols.refTimeout[slot] = beforeRef;
            cols.refTime[slot] = cols.refTime[before] ?? now;
          }
          release(before);
        }
        link(byKey, cols.nextByKey, slot, keyHash);
        link(byLine, cols.nextByLine, slot, hash);
      }
    };
    const finish = (): ConntrackRead => {
      for (let s = 0; s < nextSlot; s++) {
        const seen = cols.seen[s] ?? 0;
        if (seen === 0 || seen === read) continue;
        removed.push(s);
        release(s);
      }
      const wasRestarted = restarted;
      restarted = false;
      let diff: Diff<CompactEntry> | null = null;
      return {
        keyed: view,
        restarted: wasRestarted,
        problems,
        get diff(): Diff<CompactEntry> {
          if (diff !== null) return diff;
          // Removed slots are free, their lines garbage: both stay as they are only until the next read.
          if (epoch !== thisEpoch) throw new Error('a conntrack diff was asked for after the next read');
          const entry = (s: number): CompactEntry => new SlotEntry(reader, s, null);
          diff = { added: added.map(entry), removed: removed.map(keyOfSlot), changed: changed.map(entry), refreshed: refreshed.map(entry) };
          return diff;
        },
      };
    };
    return { feed, finish };
  };

  /**
   * The line's bytes equal the kept line's everywhere but its volatile
   * numbers: the timer digits, and the digits after ` packets=`, ` bytes=`,
   * ` delta-time=` and ` use=`. None of those is in a record's state, so
   * equal lines are the same state by the contract's sameState too. A kept
   * line that is not packed is compared whole (the slow path then decides).
   */
  function sameOutsideVolatile(b: Buffer, start: number, end: number, tStart: number, tEnd: number, slot: number): boolean {
    const off = cols.offset[slot] ?? 0;
    const kept = arena.block(off);
    const pos = off & (BLOCK - 1);
    const keptEnd = pos + (cols.length[slot] ?? 0);
    const keptLineLength = cols.lineLength[slot] ?? 0;
    const keptStart = cols.timerStart[slot] ?? NO_TIMER;
    const verbatim = ((cols.flags[slot] ?? 0) & VERBATIM) !== 0;
    if (tStart === NO_TIMER) {
      if (keptStart !== NO_TIMER) return false;
      return verbatim ? end - start === keptLineLength && b.compare(kept, pos, keptEnd, start, end) === 0 : samePackedOutsideVolatile(kept, pos, keptEnd, b, start, end);
    }
    const keptTimerLength = (cols.timerEnd[slot] ?? NO_TIMER) - keptStart;
    if (keptStart !== tStart) return false;
    const timerAt = pos + (cols.packedTimer[slot] ?? 0);
    if (verbatim)
      return (
        keptLineLength - keptTimerLength === end - start - (tEnd - tStart) &&
        b.compare(kept, pos, timerAt, start, start + tStart) === 0 &&
        b.compare(kept, timerAt + keptTimerLength, keptEnd, start + tEnd, end) === 0
      );
    // Before the timer come only the l3/l4 columns: nothing volatile.
    return samePacked(kept, pos, timerAt, b, start, start + tStart) && samePackedOutsideVolatile(kept, timerAt + keptTimerLength, keptEnd, b, start + tEnd, end);
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
      byLine = new Int32Array(0);
      byKey = new Int32Array(0);
      free = new SlotList();
      nextSlot = 0;
      liveCount = 0;
      restarted = true;
      epoch++;
    },
  };
}

/** 30 bits: hash-table buckets, and the same width as before for the timer-insensitive line hash. */
function hashBytes(b: Uint8Array, from: number, to: number, seed: number): number {
  let h = seed;
  for (let i = from; i < to; i++) h = Math.imul(h ^ (b[i] ?? 0), 16777619);
  return h & 0x3fffffff;
}

/** hashBytes, with the digits after the volatile keys (VOLATILE_KEYS) left out: a line hashes the same as its counters move. */
function hashOutsideVolatile(b: Uint8Array, from: number, to: number, seed: number): number {
  let h = seed;
  let i = from;
  while (i < to) {
    const c = b[i] ?? 0;
    h = Math.imul(h ^ c, 16777619);
    i++;
    if (c !== 32) continue;
    const keyEnd = volatileKeyEnd(b, i, to);
    if (keyEnd < 0) continue;
    for (; i < keyEnd; i++) h = Math.imul(h ^ (b[i] ?? 0), 16777619);
    while (i < to && (b[i] ?? 0) >= 48 && (b[i] ?? 0) <= 57) i++;
  }
  return h & 0x3fffffff;
}

function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return h & 0x3fffffff;
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
