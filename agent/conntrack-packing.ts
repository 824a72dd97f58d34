// Conntrack lines are mostly the same few words: the l3/l4 columns, the
// state, `src=` `dst=` `sport=` `dport=` twice, the flags and `mark=0
// zone=0 use=2` (FORMATS.md §3.1 ct_seq_show(), §3.2
// __snprintf_conntrack_default()). The agent keeps every entry's line for
// as long as the entry lives, so it keeps them packed: each of those words
// becomes one byte (0x80 + its index below), everything else stays as it
// is. The kernel and conntrack-tools print ASCII only, so a byte of 0x80 or
// more is always a word; a line that holds one anyway is kept verbatim by
// the caller. Packing is done once per new or changed line; lines read
// again are compared with the packed form directly, without unpacking.

/**
 * The words, at most 128. Greedy longest match, so a longer word that
 * starts like a shorter one is found first. Changing this list changes
 * nothing on the wire: packed lines never leave the agent.
 */
const WORDS = [
  // l3 and l4 columns, procfs and `conntrack -L [-o extended]`
  'ipv4     2 tcp      6 ',
  'ipv4     2 udp      17 ',
  'ipv4     2 icmp     1 ',
  'ipv4     2 sctp     132 ',
  'ipv4     2 gre      47 ',
  'ipv6     10 tcp      6 ',
  'ipv6     10 udp      17 ',
  'ipv6     10 icmpv6   58 ',
  'ipv6     10 sctp     132 ',
  'tcp      6 ',
  'udp      17 ',
  'icmp     1 ',
  'icmpv6   58 ',
  'sctp     132 ',
  // TCP and SCTP states, with the spaces around them
  ' ESTABLISHED ',
  ' TIME_WAIT ',
  ' SYN_SENT ',
  ' SYN_RECV ',
  ' CLOSE_WAIT ',
  ' FIN_WAIT ',
  ' LAST_ACK ',
  ' CLOSE ',
  ' SYN_SENT2 ',
  ' COOKIE_WAIT ',
  ' COOKIE_ECHOED ',
  ' SHUTDOWN_SENT ',
  ' SHUTDOWN_RECD ',
  ' SHUTDOWN_ACK_SENT ',
  ' HEARTBEAT_SENT ',
  // tuple keys
  'src=',
  ' src=',
  ' dst=',
  ' sport=',
  ' dport=',
  ' type=',
  ' code=',
  ' id=',
  ' srckey=',
  ' dstkey=',
  ' packets=',
  ' bytes=',
  // flags and trailers
  ' [ASSURED]',
  ' [UNREPLIED]',
  ' [OFFLOAD]',
  ' [HW_OFFLOAD]',
  ' mark=0',
  ' mark=',
  ' zone=0',
  ' zone=',
  ' delta-time=',
  ' secctx=',
  ' labels=',
  ' use=1',
  ' use=2',
  ' use=',
  // addresses: procfs prints IPv6 in full, with many zero groups
  ':0000',
  '0000:',
  'fd00:',
  'fe80:',
  '10.',
  '172.',
  '192.168.',
  '127.0.0.1',
  '100.64.',
  '169.254.',
];

const WORD_BYTES: Uint8Array[] = WORDS.map((w) => Buffer.from(w, 'latin1'));
/** Word indexes by their first byte, longest first: where `pack` looks. */
const BY_FIRST: number[][] = Array.from({ length: 128 }, () => []);
for (const [i, w] of WORD_BYTES.entries()) BY_FIRST[w[0] ?? 0]?.push(i);
for (const list of BY_FIRST) list.sort((a, b) => (WORD_BYTES[b]?.length ?? 0) - (WORD_BYTES[a]?.length ?? 0));
/** All words end to end, with where each starts and its length: the hot compare reads typed arrays only. */
const FLAT = Buffer.concat(WORD_BYTES);
const STARTS = new Uint16Array(WORD_BYTES.length);
const LENGTHS = new Uint8Array(WORD_BYTES.length);
{
  let at = 0;
  for (const [i, w] of WORD_BYTES.entries()) {
    STARTS[i] = at;
    LENGTHS[i] = w.length;
    at += w.length;
  }
}

/** The first byte value that stands for a word. */
const WORD = 0x80;

/**
 * Packs `src[from, to)` into `out` at `at`; returns where the packed bytes
 * end, or -1 when the text holds a byte of 0x80 or more (keep it verbatim).
 * `out` needs room for `to - from` bytes: packing never lengthens.
 */
export function pack(src: Uint8Array, from: number, to: number, out: Uint8Array, at: number): number {
  let o = at;
  let i = from;
  while (i < to) {
    const c = src[i] ?? 0;
    if (c >= WORD) return -1;
    let word = -1;
    for (const w of BY_FIRST[c] ?? []) {
      const n = LENGTHS[w] ?? 0;
      if (i + n > to) continue;
      const s = STARTS[w] ?? 0;
      let k = 1;
      while (k < n && src[i + k] === FLAT[s + k]) k++;
      if (k === n) {
        word = w;
        break;
      }
    }
    if (word < 0) {
      out[o++] = c;
      i++;
    } else {
      out[o++] = WORD + word;
      i += LENGTHS[word] ?? 1;
    }
  }
  return o;
}

/** Unpacks `packed[from, to)` into `out` at `at`; returns where the text ends. */
export function unpack(packed: Uint8Array, from: number, to: number, out: Uint8Array, at: number): number {
  let o = at;
  for (let i = from; i < to; i++) {
    const c = packed[i] ?? 0;
    if (c < WORD) {
      out[o++] = c;
      continue;
    }
    const s = STARTS[c - WORD] ?? 0;
    const n = LENGTHS[c - WORD] ?? 0;
    for (let k = 0; k < n; k++) out[o++] = FLAT[s + k] ?? 0;
  }
  return o;
}

/** `packed[from, to)` unpacks to exactly `text[textFrom, textTo)`, found without unpacking. */
export function samePacked(packed: Uint8Array, from: number, to: number, text: Uint8Array, textFrom: number, textTo: number): boolean {
  let t = textFrom;
  for (let i = from; i < to; i++) {
    const c = packed[i] ?? 0;
    if (c < WORD) {
      if (t >= textTo || text[t] !== c) return false;
      t++;
      continue;
    }
    const s = STARTS[c - WORD] ?? 0;
    const n = LENGTHS[c - WORD] ?? 0;
    if (t + n > textTo) return false;
    for (let k = 0; k < n; k++) if (text[t + k] !== FLAT[s + k]) return false;
    t += n;
  }
  return t === textTo;
}

/**
 * The keys whose numbers move while an entry keeps its state: the counters
 * (nf_conntrack_acct=1, both directions), the entry's age (delta-time=,
 * nf_conntrack_timestamp=1) and its reference count (use=). The contract's
 * sameState reads none of them, so lines that differ only in their digits
 * are the same state and need not be parsed.
 */
const VOLATILE_KEYS: readonly Uint8Array[] = ['packets=', 'bytes=', 'delta-time=', 'use='].map((k) => Buffer.from(k, 'latin1'));

/** Where the value starts when `b[at, to)` starts with a volatile key (`at` just after a space), or -1. */
export function volatileKeyEnd(b: Uint8Array, at: number, to: number): number {
  const c = b[at];
  if (c !== 112 /* p */ && c !== 98 /* b */ && c !== 100 /* d */ && c !== 117 /* u */) return -1;
  for (const k of VOLATILE_KEYS) {
    if (k[0] !== c || at + k.length > to) continue;
    let i = 1;
    while (i < k.length && b[at + i] === k[i]) i++;
    if (i === k.length) return at + i;
  }
  return -1;
}

/** For each word: the length of its volatile key (` packets=`, ` use=` of ` use=1` …), or 0 when it holds none. */
const VOLATILE_WORD_KEY = new Uint8Array(WORD_BYTES.length);
for (const [i, w] of WORD_BYTES.entries()) {
  if (w[0] !== 32) continue;
  const end = volatileKeyEnd(w, 1, w.length);
  // The rest of the word, if any, must be the start of the value (` use=1`).
  if (end >= 0 && w.subarray(end).every((d) => d >= 48 && d <= 57)) VOLATILE_WORD_KEY[i] = end;
}

const isDigit = (c: number | undefined): boolean => c !== undefined && c >= 48 && c <= 57;

/**
 * samePacked, except that the digits after a volatile key may differ (and
 * differ in length). Only keys packed as words are masked: a key kept as
 * plain bytes is compared as it is, so a line that does not match here is
 * only parsed, never taken for another.
 */
export function samePackedOutsideVolatile(packed: Uint8Array, from: number, to: number, text: Uint8Array, textFrom: number, textTo: number): boolean {
  let t = textFrom;
  let i = from;
  while (i < to) {
    const c = packed[i] ?? 0;
    i++;
    if (c < WORD) {
      if (t >= textTo || text[t] !== c) return false;
      t++;
      continue;
    }
    const w = c - WORD;
    const s = STARTS[w] ?? 0;
    const key = VOLATILE_WORD_KEY[w] ?? 0;
    const n = key === 0 ? (LENGTHS[w] ?? 0) : key;
    if (t + n > textTo) return false;
    for (let k = 0; k < n; k++) if (text[t + k] !== FLAT[s + k]) return false;
    t += n;
    if (key === 0) continue;
    // The value: the word's own digits (` use=1`) and those after it, against the text's digits.
    while (i < to && isDigit(packed[i])) i++;
    while (t < textTo && isDigit(text[t])) t++;
  }
  return t === textTo;
}
