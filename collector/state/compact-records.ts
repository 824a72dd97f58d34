// The collector holds every node's conntrack and IPVS connection tables: at
// 5,000 entries a node and 200 nodes that is a million records, and one JS
// object per record (with its nested tuples and its raw line) costs about
// 2.2 KB. So the big sources are kept the way the agent keeps conntrack
// (agent/conntrack-cache.ts): each record's fields in typed-array columns,
// its strings interned (addresses as 32-bit numbers where they are IPv4),
// its raw line packed into a byte arena, and a hash index over the key of
// the contract's spec threaded through columns. A record is rebuilt from the
// columns when asked for (get, iteration): no parser runs here, so what comes
// back is exactly what was put, whichever agent sent it.
//
// Why columns and not the raw line re-parsed: the collector may not import
// the agent's parsers, and a record from the wire is only schema-checked: a
// hostile or buggy agent can send a record whose fields its raw line does not
// parse to, and detectors must see what the node sent, not a re-reading of
// it. Decoding a few columns is also much cheaper than parsing a line, and
// detectors look records up on every step.
//
// A record that does not fit the columns (a key order other than the
// schema's, a value out of a column's range, a raw line that is not ASCII or
// is longer than 64 KiB) is kept as the object it came as, in the same slot:
// the store stays exact, only less compact for that record.
//
// Slots are handed out in insertion order and a put on a held key rewrites
// its slot in place, so iteration follows a Map's order exactly (insertion
// order, a re-set keeping its place). Deleted slots and replaced lines are
// reclaimed by compaction, which rewrites the live slots in order.
import type { ConntrackEntry, ConntrackTuple, IpvsConnection } from '../../contract/records.ts';
import type { SourceName } from '../../contract/sources.ts';

/** What NodeView keeps per source: records by key, with the sample time each was read at. */
export interface HeldRecords<T> extends ReadonlyMap<string, T> {
  /** Sets `key` to `record`, read at `readAt`: a held key keeps its place in iteration order (as Map.set). */
  put(key: string, record: T, readAt: number): void;
  delete(key: string): boolean;
  /** The sample time the record held for `key` was read at. */
  readAt(key: string): number | undefined;
  /** What detectors read: the store itself, or for small sources the Map behind it. */
  readonly view: ReadonlyMap<string, T>;
  /** A copy that later changes to this store do not reach (a snapshot step's records, kept in history). */
  copy(): HeldRecords<T>;
}

/** Small sources: a Map, and the read times beside it. */
export class MapRecords<T> implements HeldRecords<T> {
  readonly #map = new Map<string, T>();
  readonly #readAt = new Map<string, number>();
  get view(): ReadonlyMap<string, T> {
    return this.#map;
  }
  get size(): number {
    return this.#map.size;
  }
  get(key: string): T | undefined {
    return this.#map.get(key);
  }
  has(key: string): boolean {
    return this.#map.has(key);
  }
  put(key: string, record: T, readAt: number): void {
    this.#map.set(key, record);
    this.#readAt.set(key, readAt);
  }
  delete(key: string): boolean {
    this.#readAt.delete(key);
    return this.#map.delete(key);
  }
  readAt(key: string): number | undefined {
    return this.#readAt.get(key);
  }
  copy(): MapRecords<T> {
    const c = new MapRecords<T>();
    for (const [k, v] of this.#map) c.put(k, v, this.#readAt.get(k) ?? 0);
    return c;
  }
  forEach(fn: (value: T, key: string, map: ReadonlyMap<string, T>) => void): void {
    for (const [k, v] of this.#map) fn(v, k, this);
  }
  entries(): MapIterator<[string, T]> {
    return this.#map.entries();
  }
  keys(): MapIterator<string> {
    return this.#map.keys();
  }
  values(): MapIterator<T> {
    return this.#map.values();
  }
  [Symbol.iterator](): MapIterator<[string, T]> {
    return this.#map.entries();
  }
}

// ---- interned strings --------------------------------------------------------

/**
 * Strings that repeat across records (protocol and state names, IPv6
 * addresses, ICMP ids), each held once with a count of the fields that hold
 * it, so a string no record uses any more is let go. Id 0 is null.
 */
class Strings {
  readonly #ids = new Map<string, number>();
  #values: (string | undefined)[] = [undefined];
  #refs = new Uint32Array(16);
  readonly #free: number[] = [];

  intern(s: string): number {
    let id = this.#ids.get(s);
    if (id === undefined) {
      id = this.#free.pop() ?? this.#values.length;
      if (id >= this.#refs.length) {
        const grown = new Uint32Array(this.#refs.length * 2);
        grown.set(this.#refs);
        this.#refs = grown;
      }
      this.#values[id] = s;
      this.#ids.set(s, id);
    }
    this.#refs[id] = (this.#refs[id] ?? 0) + 1;
    return id;
  }

  internNullable(s: string | null): number {
    return s === null ? 0 : this.intern(s);
  }

  release(id: number): void {
    if (id === 0) return;
    const left = (this.#refs[id] ?? 1) - 1;
    this.#refs[id] = left;
    if (left > 0) return;
    const s = this.#values[id];
    if (s !== undefined) this.#ids.delete(s);
    this.#values[id] = undefined;
    this.#free.push(id);
  }

  get(id: number): string {
    return this.#values[id] ?? '';
  }

  copy(): Strings {
    const c = new Strings();
    for (const [s, id] of this.#ids) c.#ids.set(s, id);
    c.#values = this.#values.slice();
    c.#refs = this.#refs.slice();
    for (const id of this.#free) c.#free.push(id);
    return c;
  }

  getNullable(id: number): string | null {
    return id === 0 ? null : (this.#values[id] ?? null);
  }
}

// ---- addresses ------------------------------------------------------------------

/** A canonical dotted quad (no leading zeros, each part ≤ 255) as a number, or -1: only such addresses read back identical. */
function ipv4Number(s: string): number {
  const n = s.length;
  if (n < 7 || n > 15) return -1;
  let value = 0;
  let part = 0;
  let digits = 0;
  let parts = 0;
  for (let i = 0; i <= n; i++) {
    const c = i < n ? s.charCodeAt(i) : 46;
    if (c === 46) {
      if (digits === 0 || part > 255) return -1;
      value = value * 256 + part;
      parts++;
      part = 0;
      digits = 0;
      continue;
    }
    if (c < 48 || c > 57) return -1;
    if (digits > 0 && part === 0) return -1; // a leading zero
    part = part * 10 + (c - 48);
    digits++;
  }
  return parts === 4 ? value : -1;
}
const ipv4Text = (v: number): string => `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;

/** An address field: IPv4 as its number (flag clear), anything else interned (flag set). */
function putAddress(s: string, strings: Strings): { word: number; interned: boolean } {
  const v = ipv4Number(s);
  return v >= 0 ? { word: v, interned: false } : { word: strings.intern(s), interned: true };
}

// ---- raw line packing -------------------------------------------------------

/**
 * Raw lines are mostly the same few words (`ipv4     2 tcp      6 `, ` src=`,
 * ` dport=`, ` [ASSURED] mark=0 zone=0 use=2`). Each becomes one byte of
 * 0x80 or more; the lines kept are ASCII, so such a byte is always a word.
 * The agent packs its own lines the same way (agent/conntrack-packing.ts);
 * these words live here because the collector may not import agent code,
 * and packed bytes never leave the store.
 */
class Packer {
  readonly #flat: Uint8Array;
  readonly #starts: Uint32Array;
  readonly #lengths: Uint8Array;
  readonly #byFirst: number[][] = Array.from({ length: 128 }, () => []);

  constructor(words: readonly string[]) {
    if (words.length > 128) throw new Error('at most 128 packing words');
    const bytes = words.map((w) => Buffer.from(w, 'latin1'));
    this.#flat = Buffer.concat(bytes);
    this.#starts = new Uint32Array(bytes.length);
    this.#lengths = new Uint8Array(bytes.length);
    let at = 0;
    for (const [i, w] of bytes.entries()) {
      this.#starts[i] = at;
      this.#lengths[i] = w.length;
      at += w.length;
      this.#byFirst[w[0] ?? 0]?.push(i);
    }
    for (const list of this.#byFirst) list.sort((a, b) => (this.#lengths[b] ?? 0) - (this.#lengths[a] ?? 0));
  }

  /** Packs ASCII `src[0, n)` into `out` at `at`; returns where it ends. Never longer than the text. */
  pack(src: Uint8Array, n: number, out: Uint8Array, at: number): number {
    let o = at;
    let i = 0;
    const flat = this.#flat;
    while (i < n) {
      const c = src[i] ?? 0;
      let word = -1;
      for (const w of this.#byFirst[c] ?? []) {
        const len = this.#lengths[w] ?? 0;
        if (i + len > n) continue;
        const s = this.#starts[w] ?? 0;
        let k = 1;
        while (k < len && src[i + k] === flat[s + k]) k++;
        if (k === len) {
          word = w;
          break;
        }
      }
      if (word < 0) {
        out[o++] = c;
        i++;
      } else {
        out[o++] = 0x80 + word;
        i += this.#lengths[word] ?? 1;
      }
    }
    return o;
  }

  /** Unpacks `packed[from, to)` into `out` from 0; returns the text's length. */
  unpack(packed: Uint8Array, from: number, to: number, out: Uint8Array): number {
    let o = 0;
    const flat = this.#flat;
    for (let i = from; i < to; i++) {
      const c = packed[i] ?? 0;
      if (c < 0x80) {
        out[o++] = c;
        continue;
      }
      const s = this.#starts[c - 0x80] ?? 0;
      const len = this.#lengths[c - 0x80] ?? 0;
      for (let k = 0; k < len; k++) out[o++] = flat[s + k] ?? 0;
    }
    return o;
  }
}

/** Longest line kept packed: the packed length is kept in 16 bits, and a line unpacks into the scratch buffer. */
const MAX_RAW = 0xffff;
const scratchIn = Buffer.allocUnsafeSlow(MAX_RAW);
const scratchOut = Buffer.allocUnsafeSlow(MAX_RAW);

// ---- codecs: one source's fields in columns ------------------------------------

/**
 * How one source's records sit in a row of Uint32 columns. `fits` checks
 * everything first (so a record that does not fit leaves nothing interned),
 * `write` then fills the row, `read` rebuilds the record, `release` lets go
 * of the row's strings.
 */
interface Codec<T> {
  /** Uint32 words per row. */
  readonly words: number;
  readonly packer: Packer;
  rawOf(record: T): string;
  fits(record: T): boolean;
  write(record: T, row: Uint32Array, at: number, strings: Strings): void;
  read(row: Uint32Array, at: number, strings: Strings, raw: string): T;
  release(row: Uint32Array, at: number, strings: Strings): void;
}

/** The keys of a record, in order, are exactly `keys`: decoded records come back in the schema's order, so JSON of them is unchanged. */
function hasKeysInOrder(o: object, keys: readonly string[]): boolean {
  let i = 0;
  for (const k in o) if (k !== keys[i++]) return false;
  return i === keys.length;
}
const isU32 = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
const isI32 = (v: number): boolean => Number.isInteger(v) && v >= -0x80000000 && v <= 0x7fffffff;
const isU16 = (v: number): boolean => Number.isInteger(v) && v >= 0 && v <= 0xffff;

const CT_KEYS: readonly string[] = ['family', 'proto', 'protoNum', 'timeout', 'state', 'orig', 'reply', 'unreplied', 'assured', 'offload', 'mark', 'zone', 'raw'];
const TUPLE_KEYS: readonly string[] = ['src', 'dst', 'sport', 'dport', 'extra'];

// Conntrack row: [flags, proto, protoNum, timeout, state, origSrc, origDst, origPorts, origExtra, replySrc, replyDst, replyPorts, replyExtra, mark, zone]
const F_IPV6 = 1 << 0;
const F_UNREPLIED = 1 << 1;
const F_ASSURED = 1 << 2;
const F_OFFLOAD_SW = 1 << 3;
const F_OFFLOAD_HW = 1 << 4;
const F_NO_TIMEOUT = 1 << 5;
const F_NO_MARK = 1 << 6;
/** Per tuple (orig at bit 8, reply at bit 13): src interned, dst interned, no sport, no dport. */
const T_SRC = 1 << 0;
const T_DST = 1 << 1;
const T_NO_SPORT = 1 << 2;
const T_NO_DPORT = 1 << 3;
const ORIG = 8;
const REPLY = 13;

const tupleFits = (t: ConntrackTuple): boolean =>
  hasKeysInOrder(t, TUPLE_KEYS) && (t.sport === null || isU16(t.sport)) && (t.dport === null || isU16(t.dport));

function writeTuple(t: ConntrackTuple, row: Uint32Array, at: number, strings: Strings): number {
  const src = putAddress(t.src, strings);
  const dst = putAddress(t.dst, strings);
  row[at] = src.word;
  row[at + 1] = dst.word;
  row[at + 2] = ((t.sport ?? 0) << 16) | (t.dport ?? 0);
  row[at + 3] = strings.internNullable(t.extra);
  return (src.interned ? T_SRC : 0) | (dst.interned ? T_DST : 0) | (t.sport === null ? T_NO_SPORT : 0) | (t.dport === null ? T_NO_DPORT : 0);
}

function readTuple(row: Uint32Array, at: number, bits: number, strings: Strings): ConntrackTuple {
  const s = row[at] ?? 0;
  const d = row[at + 1] ?? 0;
  const ports = row[at + 2] ?? 0;
  return {
    src: bits & T_SRC ? strings.get(s) : ipv4Text(s),
    dst: bits & T_DST ? strings.get(d) : ipv4Text(d),
    sport: bits & T_NO_SPORT ? null : ports >>> 16,
    dport: bits & T_NO_DPORT ? null : ports & 0xffff,
    extra: strings.getNullable(row[at + 3] ?? 0),
  };
}

function releaseTuple(row: Uint32Array, at: number, bits: number, strings: Strings): void {
  if (bits & T_SRC) strings.release(row[at] ?? 0);
  if (bits & T_DST) strings.release(row[at + 1] ?? 0);
  strings.release(row[at + 3] ?? 0);
}

/** The words of conntrack lines, procfs and `conntrack -L [-o extended]` (FORMATS.md §3.1, §3.2). */
const CONNTRACK_WORDS: readonly string[] = [
  'ipv4     2 tcp      6 ', 'ipv4     2 udp      17 ', 'ipv4     2 icmp     1 ', 'ipv4     2 sctp     132 ', 'ipv4     2 gre      47 ',
  'ipv6     10 tcp      6 ', 'ipv6     10 udp      17 ', 'ipv6     10 icmpv6   58 ', 'ipv6     10 sctp     132 ',
  'tcp      6 ', 'udp      17 ', 'icmp     1 ', 'icmpv6   58 ', 'sctp     132 ',
  ' ESTABLISHED ', ' TIME_WAIT ', ' SYN_SENT ', ' SYN_RECV ', ' CLOSE_WAIT ', ' FIN_WAIT ', ' LAST_ACK ', ' CLOSE ', ' SYN_SENT2 ',
  'src=', ' src=', ' dst=', ' sport=', ' dport=', ' type=', ' code=', ' id=', ' packets=', ' bytes=',
  ' [ASSURED]', ' [UNREPLIED]', ' [OFFLOAD]', ' [HW_OFFLOAD]', ' mark=0', ' mark=', ' zone=0', ' zone=', ' delta-time=', ' use=1', ' use=2', ' use=',
  ':0000', '0000:', 'fd00:', 'fe80:', '10.', '172.', '192.168.', '127.0.0.1', '100.64.', '169.254.',
];

const conntrackCodec: Codec<ConntrackEntry> = {
  words: 15,
  packer: new Packer(CONNTRACK_WORDS),
  rawOf: (e) => e.raw,
  fits: (e) =>
    hasKeysInOrder(e, CT_KEYS) &&
    isU32(e.protoNum) &&
    (e.timeout === null || isI32(e.timeout)) &&
    (e.mark === null || isU32(e.mark)) &&
    isU32(e.zone) &&
    tupleFits(e.orig) &&
    tupleFits(e.reply),
  write(e, row, at, strings) {
    let flags = (e.family === 'ipv6' ? F_IPV6 : 0) | (e.unreplied ? F_UNREPLIED : 0) | (e.assured ? F_ASSURED : 0);
    flags |= e.offload === 'sw' ? F_OFFLOAD_SW : e.offload === 'hw' ? F_OFFLOAD_HW : 0;
    flags |= (e.timeout === null ? F_NO_TIMEOUT : 0) | (e.mark === null ? F_NO_MARK : 0);
    row[at + 1] = strings.intern(e.proto);
    row[at + 2] = e.protoNum;
    row[at + 3] = e.timeout ?? 0;
    row[at + 4] = strings.internNullable(e.state);
    flags |= writeTuple(e.orig, row, at + 5, strings) << ORIG;
    flags |= writeTuple(e.reply, row, at + 9, strings) << REPLY;
    row[at + 13] = e.mark ?? 0;
    row[at + 14] = e.zone;
    row[at] = flags;
  },
  read(row, at, strings, raw) {
    const flags = row[at] ?? 0;
    return {
      family: flags & F_IPV6 ? 'ipv6' : 'ipv4',
      proto: strings.get(row[at + 1] ?? 0),
      protoNum: row[at + 2] ?? 0,
      timeout: flags & F_NO_TIMEOUT ? null : (row[at + 3] ?? 0) | 0,
      state: strings.getNullable(row[at + 4] ?? 0),
      orig: readTuple(row, at + 5, flags >>> ORIG, strings),
      reply: readTuple(row, at + 9, flags >>> REPLY, strings),
      unreplied: (flags & F_UNREPLIED) !== 0,
      assured: (flags & F_ASSURED) !== 0,
      offload: flags & F_OFFLOAD_SW ? 'sw' : flags & F_OFFLOAD_HW ? 'hw' : 'none',
      mark: flags & F_NO_MARK ? null : (row[at + 13] ?? 0),
      zone: row[at + 14] ?? 0,
      raw,
    };
  },
  release(row, at, strings) {
    const flags = row[at] ?? 0;
    strings.release(row[at + 1] ?? 0);
    strings.release(row[at + 4] ?? 0);
    releaseTuple(row, at + 5, flags >>> ORIG, strings);
    releaseTuple(row, at + 9, flags >>> REPLY, strings);
  },
};

const IPVS_KEYS: readonly string[] = ['proto', 'client', 'virtual', 'destination', 'state', 'expiresSeconds', 'template', 'raw'];
const ENDPOINT_KEYS: readonly string[] = ['address', 'port'];
const endpointFits = (e: { address: string; port: number }): boolean => hasKeysInOrder(e, ENDPOINT_KEYS) && isU16(e.port);
// IPVS row: [flags, proto, client, virtual, destination, clientPort<<16|virtualPort, destinationPort, state, expires]
const I_TEMPLATE = 1 << 0;
const I_CLIENT = 1 << 1;
const I_VIRTUAL = 1 << 2;
const I_DESTINATION = 1 << 3;

/** The words of `ipvsadm -Lnc` lines (`%-3s %-6s %-11s %-18s %-18s %s`). */
const IPVS_WORDS: readonly string[] = [
  'TCP ', 'UDP ', 'SCTP ', ' ESTABLISHED ', ' TIME_WAIT ', ' SYN_RECV ', ' SYN_SENT ', ' FIN_WAIT ', ' CLOSE_WAIT ', ' LAST_ACK ', ' CLOSE ',
  ' NONE ', ' ERR ', '     ', '  ', '10.', '172.', '192.168.', '100.64.',
];

const ipvsConnCodec: Codec<IpvsConnection> = {
  words: 9,
  packer: new Packer(IPVS_WORDS),
  rawOf: (c) => c.raw,
  fits: (c) =>
    hasKeysInOrder(c, IPVS_KEYS) && endpointFits(c.client) && endpointFits(c.virtual) && endpointFits(c.destination) && isI32(c.expiresSeconds),
  write(c, row, at, strings) {
    const client = putAddress(c.client.address, strings);
    const virtual = putAddress(c.virtual.address, strings);
    const destination = putAddress(c.destination.address, strings);
    row[at] = (c.template ? I_TEMPLATE : 0) | (client.interned ? I_CLIENT : 0) | (virtual.interned ? I_VIRTUAL : 0) | (destination.interned ? I_DESTINATION : 0);
    row[at + 1] = strings.intern(c.proto);
    row[at + 2] = client.word;
    row[at + 3] = virtual.word;
    row[at + 4] = destination.word;
    row[at + 5] = (c.client.port << 16) | c.virtual.port;
    row[at + 6] = c.destination.port;
    row[at + 7] = strings.intern(c.state);
    row[at + 8] = c.expiresSeconds;
  },
  read(row, at, strings, raw) {
    const flags = row[at] ?? 0;
    const addr = (word: number, interned: boolean): string => (interned ? strings.get(word) : ipv4Text(word));
    const ports = row[at + 5] ?? 0;
    return {
      proto: strings.get(row[at + 1] ?? 0),
      client: { address: addr(row[at + 2] ?? 0, (flags & I_CLIENT) !== 0), port: ports >>> 16 },
      virtual: { address: addr(row[at + 3] ?? 0, (flags & I_VIRTUAL) !== 0), port: ports & 0xffff },
      destination: { address: addr(row[at + 4] ?? 0, (flags & I_DESTINATION) !== 0), port: row[at + 6] ?? 0 },
      state: strings.get(row[at + 7] ?? 0),
      expiresSeconds: (row[at + 8] ?? 0) | 0,
      template: (flags & I_TEMPLATE) !== 0,
      raw,
    };
  },
  release(row, at, strings) {
    const flags = row[at] ?? 0;
    strings.release(row[at + 1] ?? 0);
    if (flags & I_CLIENT) strings.release(row[at + 2] ?? 0);
    if (flags & I_VIRTUAL) strings.release(row[at + 3] ?? 0);
    if (flags & I_DESTINATION) strings.release(row[at + 4] ?? 0);
    strings.release(row[at + 7] ?? 0);
  },
};

// ---- the store ----------------------------------------------------------------

/** Slot states. */
const FREE = 0;
const PACKED = 1;
/** The record did not fit the columns and is kept as its object. */
const OBJECT = 2;
const NONE = -1;

/** FNV-1a over the key's UTF-16 units. */
function hashOf(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

export class CompactRecords<T extends object> implements HeldRecords<T> {
  readonly #codec: Codec<T>;
  readonly #keyOf: (record: T) => string;
  #strings = new Strings();
  #capacity = 0;
  /** Slots used so far, live or not: new records go at the end, so slot order is insertion order. */
  #top = 0;
  #size = 0;
  #row = new Uint32Array(0);
  #state = new Uint8Array(0);
  #rawAt = new Uint32Array(0);
  #rawLength = new Uint16Array(0);
  #keyHash = new Uint32Array(0);
  #next = new Int32Array(0);
  #readAt = new Float64Array(0);
  #buckets = new Int32Array(0);
  #arena: Buffer = Buffer.alloc(0);
  #arenaUsed = 0;
  /** Arena bytes no live slot points at (replaced or deleted lines). */
  #garbage = 0;
  #objects = new Map<number, T>();

  constructor(codec: Codec<T>, keyOf: (record: T) => string) {
    this.#codec = codec;
    this.#keyOf = keyOf;
  }

  get view(): ReadonlyMap<string, T> {
    return this;
  }

  get size(): number {
    return this.#size;
  }

  /** What the store holds outside the V8 heap's objects: columns and arena, in bytes (for benches and budgets). */
  get bufferBytes(): number {
    const c = this.#capacity;
    return c * (this.#codec.words * 4 + 1 + 4 + 2 + 4 + 4 + 8) + this.#buckets.length * 4 + this.#arena.length;
  }

  /** Records kept as objects because they did not fit the columns. */
  get uncompacted(): number {
    return this.#objects.size;
  }

  /** The record #find last matched: a get decodes once. */
  #hit: T | undefined = undefined;

  #find(key: string, hash: number): number {
    if (this.#buckets.length === 0) return NONE;
    let slot = this.#buckets[hash & (this.#buckets.length - 1)] ?? NONE;
    while (slot !== NONE) {
      if (this.#keyHash[slot] === hash) {
        const r = this.#read(slot);
        if (this.#keyOf(r) === key) {
          this.#hit = r;
          return slot;
        }
      }
      slot = this.#next[slot] ?? NONE;
    }
    return NONE;
  }

  #read(slot: number): T {
    if (this.#state[slot] === OBJECT) {
      const o = this.#objects.get(slot);
      if (o !== undefined) return o;
    }
    const codec = this.#codec;
    const at = this.#rawAt[slot] ?? 0;
    const len = this.#rawLength[slot] ?? 0;
    const n = codec.packer.unpack(this.#arena, at, at + len, scratchOut);
    return codec.read(this.#row, slot * codec.words, this.#strings, scratchOut.toString('latin1', 0, n));
  }

  copy(): CompactRecords<T> {
    const c = new CompactRecords<T>(this.#codec, this.#keyOf);
    // The copy starts on this store's columns and rebuilds (compacted) into its own; the rebuild only reads the old ones.
    c.#strings = this.#strings.copy();
    c.#capacity = this.#capacity;
    c.#top = this.#top;
    c.#size = this.#size;
    c.#row = this.#row;
    c.#state = this.#state;
    c.#rawAt = this.#rawAt;
    c.#rawLength = this.#rawLength;
    c.#keyHash = this.#keyHash;
    c.#readAt = this.#readAt;
    c.#arena = this.#arena;
    c.#arenaUsed = this.#arenaUsed;
    c.#garbage = this.#garbage;
    c.#objects = new Map(this.#objects);
    if (this.#size === 0) c.#reset();
    else c.#rebuild(this.#size, this.#arenaUsed - this.#garbage);
    return c;
  }

  get(key: string): T | undefined {
    const slot = this.#find(key, hashOf(key));
    if (slot === NONE) return undefined;
    const r = this.#hit;
    this.#hit = undefined;
    return r;
  }

  has(key: string): boolean {
    return this.#find(key, hashOf(key)) !== NONE;
  }

  readAt(key: string): number | undefined {
    const slot = this.#find(key, hashOf(key));
    return slot === NONE ? undefined : this.#readAt[slot];
  }

  put(key: string, record: T, readAt: number): void {
    const hash = hashOf(key);
    const raw = this.#codec.rawOf(record);
    // Buffer.byteLength equals the length only when every unit is ASCII: only then do latin1 bytes give the same string back.
    const packable = raw.length <= MAX_RAW && Buffer.byteLength(raw, 'utf8') === raw.length && this.#codec.fits(record);
    // Room first: making it may compact, which moves slots.
    if (packable && this.#arenaUsed + raw.length > this.#arena.length) this.#arenaRoom(raw.length);
    let slot = this.#find(key, hash);
    if (slot !== NONE) this.#clear(slot);
    else {
      if (this.#top === this.#capacity) this.#makeRoom();
      slot = this.#top++;
      this.#keyHash[slot] = hash;
      this.#link(slot, hash);
      this.#size++;
    }
    this.#readAt[slot] = readAt;
    if (packable) this.#write(slot, record, raw);
    else {
      this.#state[slot] = OBJECT;
      this.#objects.set(slot, record);
    }
  }

  delete(key: string): boolean {
    const hash = hashOf(key);
    const slot = this.#find(key, hash);
    if (slot === NONE) return false;
    this.#clear(slot);
    this.#unlink(slot, hash);
    this.#state[slot] = FREE;
    this.#size--;
    // Nothing left: start over, so a table that empties does not keep its old size.
    if (this.#size === 0) this.#reset();
    return true;
  }

  /** Lets go of what a slot holds (its strings, its line's bytes), keeping its place and hash links. */
  #clear(slot: number): void {
    if (this.#state[slot] === OBJECT) this.#objects.delete(slot);
    else if (this.#state[slot] === PACKED) {
      this.#codec.release(this.#row, slot * this.#codec.words, this.#strings);
      this.#garbage += this.#rawLength[slot] ?? 0;
    }
  }

  /** Packs a record that fits into `slot`; the arena has room for its line. */
  #write(slot: number, record: T, raw: string): void {
    const codec = this.#codec;
    scratchIn.write(raw, 0, 'latin1');
    const end = codec.packer.pack(scratchIn, raw.length, this.#arena, this.#arenaUsed);
    this.#rawAt[slot] = this.#arenaUsed;
    this.#rawLength[slot] = end - this.#arenaUsed;
    this.#arenaUsed = end;
    codec.write(record, this.#row, slot * codec.words, this.#strings);
    this.#state[slot] = PACKED;
  }

  #link(slot: number, hash: number): void {
    const b = hash & (this.#buckets.length - 1);
    this.#next[slot] = this.#buckets[b] ?? NONE;
    this.#buckets[b] = slot;
  }

  #unlink(slot: number, hash: number): void {
    const b = hash & (this.#buckets.length - 1);
    let cur = this.#buckets[b] ?? NONE;
    if (cur === slot) {
      this.#buckets[b] = this.#next[slot] ?? NONE;
      return;
    }
    while (cur !== NONE) {
      const after = this.#next[cur] ?? NONE;
      if (after === slot) {
        this.#next[cur] = this.#next[slot] ?? NONE;
        return;
      }
      cur = after;
    }
  }

  // Whenever columns or arena are full, both are rebuilt to a quarter more
  // than is live: compaction and growth are one step. A steady churn (as many
  // entries come as go, lines rewritten in place) fills them with dead slots
  // and bytes at a constant rate, and a store that compacted only at half
  // dead (growing by half in between) swung up to 2.25× what it held: at 200
  // nodes ~150 MB of RSS that came and went with no change in what was held.
  // Now a store stays within 1.25× (plus a few slots). A rebuild is O(live)
  // and comes every live/4 of churn: a few ms per node every few tens of
  // seconds; growing from empty takes a few more rebuilds than at 1.5×.

  /** The slot columns are full. */
  #makeRoom(): void {
    this.#rebuild(Math.max(64, Math.ceil(this.#size * 1.25) + 16), Math.max(4096, Math.ceil((this.#arenaUsed - this.#garbage) * 1.25)));
  }

  /** No room for `need` more bytes of line. */
  #arenaRoom(need: number): void {
    this.#rebuild(this.#capacity, Math.max(4096, Math.ceil((this.#arenaUsed - this.#garbage + need) * 1.25)));
  }

  /** Rewrites the live slots, in order, into columns of `capacity` and an arena of `arenaSize`. */
  #rebuild(capacity: number, arenaSize: number): void {
    const words = this.#codec.words;
    const row = new Uint32Array(capacity * words);
    const state = new Uint8Array(capacity);
    const rawAt = new Uint32Array(capacity);
    const rawLength = new Uint16Array(capacity);
    const keyHash = new Uint32Array(capacity);
    const readAt = new Float64Array(capacity);
    const arena = Buffer.allocUnsafeSlow(Math.max(arenaSize, this.#arenaUsed - this.#garbage));
    const objects = new Map<number, T>();
    let to = 0;
    let used = 0;
    for (let from = 0; from < this.#top; from++) {
      const st = this.#state[from] ?? FREE;
      if (st === FREE) continue;
      row.set(this.#row.subarray(from * words, from * words + words), to * words);
      state[to] = st;
      keyHash[to] = this.#keyHash[from] ?? 0;
      readAt[to] = this.#readAt[from] ?? 0;
      if (st === OBJECT) {
        const o = this.#objects.get(from);
        if (o !== undefined) objects.set(to, o);
      } else {
        const at = this.#rawAt[from] ?? 0;
        const len = this.#rawLength[from] ?? 0;
        this.#arena.copy(arena, used, at, at + len);
        rawAt[to] = used;
        rawLength[to] = len;
        used += len;
      }
      to++;
    }
    this.#row = row;
    this.#state = state;
    this.#rawAt = rawAt;
    this.#rawLength = rawLength;
    this.#keyHash = keyHash;
    this.#readAt = readAt;
    this.#next = new Int32Array(capacity);
    this.#arena = arena;
    this.#arenaUsed = used;
    this.#garbage = 0;
    this.#objects.clear();
    for (const [k, v] of objects) this.#objects.set(k, v);
    this.#capacity = capacity;
    this.#top = to;
    let buckets = 16;
    while (buckets < capacity) buckets *= 2;
    this.#buckets = new Int32Array(buckets).fill(NONE);
    for (let s = 0; s < to; s++) this.#link(s, keyHash[s] ?? 0);
  }

  #reset(): void {
    this.#capacity = 0;
    this.#top = 0;
    this.#row = new Uint32Array(0);
    this.#state = new Uint8Array(0);
    this.#rawAt = new Uint32Array(0);
    this.#rawLength = new Uint16Array(0);
    this.#keyHash = new Uint32Array(0);
    this.#next = new Int32Array(0);
    this.#readAt = new Float64Array(0);
    this.#buckets = new Int32Array(0);
    this.#arena = Buffer.alloc(0);
    this.#arenaUsed = 0;
    this.#garbage = 0;
    this.#objects.clear();
  }

  *#slots(): Generator<number> {
    // A put may compact the columns under a running iteration; like a Map's, iteration is meant to be read-only here.
    for (let s = 0; s < this.#top; s++) if (this.#state[s] !== FREE) yield s;
  }

  forEach(fn: (value: T, key: string, map: ReadonlyMap<string, T>) => void): void {
    for (const s of this.#slots()) {
      const r = this.#read(s);
      fn(r, this.#keyOf(r), this);
    }
  }

  *entries(): MapIterator<[string, T]> {
    for (const s of this.#slots()) {
      const r = this.#read(s);
      yield [this.#keyOf(r), r];
    }
  }

  *keys(): MapIterator<string> {
    for (const s of this.#slots()) yield this.#keyOf(this.#read(s));
  }

  *values(): MapIterator<T> {
    for (const s of this.#slots()) yield this.#read(s);
  }

  [Symbol.iterator](): MapIterator<[string, T]> {
    return this.entries();
  }
}

/** The store for one source: compact for the big tables, a Map for the rest. */
export function heldRecordsFor<T extends object>(source: SourceName, keyOf: (record: T) => string): HeldRecords<T> {
  // The codec for a source holds only that source's records (keyed by its spec).
  if (source === 'conntrack') return new CompactRecords(conntrackCodec as unknown as Codec<T>, keyOf);
  if (source === 'ipvs-conn') return new CompactRecords(ipvsConnCodec as unknown as Codec<T>, keyOf);
  return new MapRecords<T>();
}
