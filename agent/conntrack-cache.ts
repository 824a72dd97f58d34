// The conntrack table is the one large source (250k entries at 1 Hz), and
// from one second to the next almost every line differs only in its
// countdown timer. So the agent keeps conntrack compact: per entry its key,
// its line (detached from the read) and its timer, and nothing parsed. A line
// whose text after the timer was seen last tick is the same entry in the same
// state and is not parsed again; only new or changed lines are. Full records
// are made from the kept lines only when they are sent (a diff's few changed
// entries, or a snapshot chunk by chunk).
import type { ConntrackEntry } from '../contract/records.ts';
import { conntrackTimerRearmed, sources, type Problem, type SourceSpec } from '../contract/sources.ts';
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
  /** What precedes the timer (`ipv4     2 tcp      6 `), to tell apart lines whose tails match. */
  readonly prefix: string;
  /** The timer as printed this tick. */
  timeout: number | null;
}

/** Identity and state of compact entries: the same as the contract's, read from the line. */
export const compactConntrackSpec: SourceSpec<CompactEntry> = {
  schema: { describe: 'compact conntrack entry', decode: () => ({ ok: false, error: 'compact entries never cross the wire' }) },
  keyOf: (e) => e.key,
  sameState: (a, b) => withoutTimer(a.raw) === withoutTimer(b.raw),
  refreshed: (a, b) => conntrackTimerRearmed(a.timeout, b.timeout, b),
};

/** The full record of a kept entry, for the wire. */
export function expandConntrack(e: CompactEntry): ConntrackEntry | null {
  const parsed = parseConntrackLine(e.raw);
  return 'error' in parsed ? null : parsed;
}

export interface ConntrackLineCache {
  parse(text: string): { keyed: Map<string, CompactEntry>; problems: Problem[] };
}

const keyOf = sources.conntrack.keyOf;

export function createConntrackLineCache(): ConntrackLineCache {
  let prev = new Map<string, Cached>();
  // A handful of distinct prefixes (`ipv4     2 tcp      6 `, …) shared by every entry.
  const prefixes = new Map<string, string>();
  const intern = (p: string) => {
    let v = prefixes.get(p);
    if (v === undefined) {
      v = detach(p);
      prefixes.set(v, v);
    }
    return v;
  };
  return {
    parse(text) {
      const next = new Map<string, Cached>();
      const keyed = new Map<string, CompactEntry>();
      const problems: Problem[] = [];
      let start = 0;
      let lineNo = 0;
      while (start < text.length) {
        let end = text.indexOf('\n', start);
        if (end < 0) end = text.length;
        const line = text.slice(start, end);
        start = end + 1;
        lineNo++;
        if (line.length === 0 || isConntrackToolsMessage(line)) continue;
        const cut = timerSpan(line);
        // The line after its timer is the cache key: a view, not a copy, of this tick's text.
        const tail = cut === null ? line : line.slice(cut.end);
        const timeout = cut === null ? null : cut.value;
        let c = prev.get(tail);
        if (c !== undefined && c.prefix === (cut === null ? '' : line.slice(0, cut.start))) {
          // A timer re-armed by traffic makes a fresh entry, which the diff sends as refreshed.
          if (conntrackTimerRearmed(c.timeout, timeout, c.entry)) c.entry = { ...c.entry, raw: detach(line), timeout };
          c.timeout = timeout;
        } else {
          // Entries outlive this tick's text: keep a copy of the line, not a
          // view that would pin the whole read in memory.
          const raw = detach(line);
          const parsed = parseConntrackLine(raw);
          if ('error' in parsed) {
            problems.push({ line: lineNo, text: line, reason: parsed.error });
            continue;
          }
          c = {
            entry: { key: keyOf(parsed), raw, timeout: parsed.timeout, proto: parsed.proto },
            prefix: cut === null ? '' : intern(line.slice(0, cut.start)),
            timeout: parsed.timeout,
          };
        }
        next.set(tail, c);
        if (!keyed.has(c.entry.key)) keyed.set(c.entry.key, c.entry);
      }
      prev = next;
      return { keyed, problems };
    },
  };
}

function withoutTimer(raw: string): string {
  const cut = timerSpan(raw);
  return cut === null ? raw : raw.slice(0, cut.start) + raw.slice(cut.end);
}

/**
 * Where the timer sits: after `l3name l3num l4name l4num` in procfs and
 * `conntrack -L -o extended`, after `l4name l4num` in plain `conntrack -L`
 * (FORMATS.md §3). Returns null when the line does not have that shape (an
 * offloaded flow has no timer); the whole line is then the cache key.
 */
export function timerSpan(line: string): { start: number; end: number; value: number } | null {
  let i = 0;
  const skipToken = () => {
    while (i < line.length && line.charCodeAt(i) !== 32) i++;
    while (i < line.length && line.charCodeAt(i) === 32) i++;
  };
  if (line.charCodeAt(0) === 91 /* [ */) skipToken(); // conntrack -E event tag
  const tokensBefore = line.startsWith('ipv4 ') || line.startsWith('ipv6 ') ? 4 : 2;
  for (let t = 0; t < tokensBefore; t++) skipToken();
  const start = i;
  let value = 0;
  while (i < line.length) {
    const c = line.charCodeAt(i);
    if (c < 48 || c > 57) break;
    value = value * 10 + (c - 48);
    i++;
  }
  if (i === start || line.charCodeAt(i) !== 32) return null;
  return { start, end: i, value };
}

/**
 * A copy of `s` that does not share memory with the string it was cut from.
 * V8 keeps substrings as views into their parent; concatenating forces a flat
 * copy, and the slice of that copy points at the copy alone.
 */
function detach(s: string): string {
  return ` ${s}`.slice(1);
}
