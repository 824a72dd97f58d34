// The conntrack table is the one large source (250k entries at 1 Hz), and
// from one second to the next almost every line differs only in its
// countdown timer. This cache keys each line with its timer cut out; a line
// seen last tick reuses its parsed record (and key), so only new or changed
// lines are parsed, and unchanged records stay the same object, which the
// diff skips by identity.
import type { ConntrackEntry } from '../contract/records.ts';
import { conntrackTimerRearmed, sources, type Problem } from '../contract/sources.ts';
import { parseConntrackLine } from './sources/conntrack.ts';

interface Cached {
  readonly entry: ConntrackEntry;
  readonly key: string;
  /** The timer as printed this tick (the entry may hold an older one). */
  readonly timeout: number | null;
}

export interface ConntrackLineCache {
  parse(text: string): { records: ConntrackEntry[]; keyed: Map<string, ConntrackEntry>; problems: Problem[] };
}

const keyOf = sources.conntrack.keyOf;

export function createConntrackLineCache(): ConntrackLineCache {
  let prev = new Map<string, Cached>();
  return {
    parse(text) {
      const next = new Map<string, Cached>();
      const keyed = new Map<string, ConntrackEntry>();
      const records: ConntrackEntry[] = [];
      const problems: Problem[] = [];
      let start = 0;
      let lineNo = 0;
      while (start < text.length) {
        let end = text.indexOf('\n', start);
        if (end < 0) end = text.length;
        const line = text.slice(start, end);
        start = end + 1;
        lineNo++;
        if (line.length === 0) continue;
        const cut = timerSpan(line);
        const norm = cut === null ? line : line.slice(0, cut.start) + line.slice(cut.end);
        const timeout = cut === null ? null : cut.value;
        let c = prev.get(norm) ?? next.get(norm);
        if (c !== undefined) {
          // A timer re-armed by traffic makes a fresh record, which the diff sends as refreshed.
          const entry = conntrackTimerRearmed(c.timeout, timeout, c.entry) ? { ...c.entry, timeout, raw: line } : c.entry;
          c = { entry, key: c.key, timeout };
        } else {
          const parsed = parseConntrackLine(line);
          if ('error' in parsed) {
            problems.push({ line: lineNo, text: line, reason: parsed.error });
            continue;
          }
          c = { entry: parsed, key: keyOf(parsed), timeout: parsed.timeout };
        }
        next.set(norm, c);
        if (!keyed.has(c.key)) {
          keyed.set(c.key, c.entry);
          records.push(c.entry);
        }
      }
      prev = next;
      return { records, keyed, problems };
    },
  };
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
