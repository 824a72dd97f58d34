// Per-CPU statistics tables (FORMATS.md §4):
// - /proc/net/stat/nf_conntrack, ct_cpu_seq_show() in nf_conntrack_standalone.c,
//   and /proc/net/stat/rt_cache, rt_cpu_seq_show() in net/ipv4/route.c: a
//   header line of column names, then one row of `%08x` hex fields per
//   possible CPU. Columns are keyed by header name, never by position: the
//   names changed over kernel versions (`searched` → `clashres`,
//   `delete_list` → `chainlength`) and rt_cache has a header of its own.
// - `conntrack -S` (conntrack-tools src/conntrack.c): `cpu=%-4u\t` then
//   `%s=%u ` per counter, one line per CPU, from netlink (nfct_stats_cb) or,
//   since 1.4.5, from the /proc table (display_proc_conntrack_stats);
//   conntrack-tools ≤ 1.4.4 printed `%-10s\t\t%-8u` lines, one per counter,
//   for CPU 0 only.
import type { StatRow } from '../../contract/records.ts';
import type { ParseResult, Problem } from '../../contract/sources.ts';

const NAME = /^[a-z][a-z0-9_]*$/;
const HEX = /^[0-9a-f]+$/;
const DECIMAL = /^\d+$/;
const CPU_LINE = /^cpu=(\d+)(?:\s+(.*))?$/;
const KEY_VALUE = /^([a-z][a-z0-9_]*)=(\d+)$/;

/**
 * Columns that hold one host-wide value repeated on every CPU's row, so a sum
 * over rows would multiply it by the CPU count: `entries` in
 * /proc/net/stat/nf_conntrack is nf_conntrack_count() (ct_cpu_seq_show), in
 * /proc/net/stat/rt_cache it is dst_entries_get_slow(&ipv4_dst_ops)
 * (rt_cpu_seq_show); conntrack -S shows it as `entries=` when it reads /proc.
 * Every other column of the three is a per-CPU counter.
 */
export const GLOBAL_COUNTERS: readonly string[] = ['entries'];

/** A ≤ 1.4.4 `conntrack -S` line: `%-10s\t\t%-8u`, one counter of CPU 0. */
function oldFormLine(tokens: readonly string[]): { name: string; value: number } | null {
  const [name, value] = tokens;
  if (tokens.length !== 2 || name === undefined || value === undefined) return null;
  return NAME.test(name) && DECIMAL.test(value) ? { name, value: Number(value) } : null;
}

export function parseConntrackStat(text: string): ParseResult<StatRow> {
  const records: StatRow[] = [];
  const problems: Problem[] = [];
  const lines = text.split('\n');
  let header: string[] | null = null;
  let headerLine = 0;
  let rowIndex = 0;
  // The ≤ 1.4.4 form spreads CPU 0's row over consecutive lines.
  let oldForm: { counters: Record<string, number>; raw: string[] } | null = null;
  const flushOldForm = () => {
    if (oldForm !== null) records.push({ cpu: 0, counters: oldForm.counters, raw: oldForm.raw.join('\n') });
    oldForm = null;
  };

  for (let i = 0; i < lines.length; i++) {
    const rawLine = lines[i] ?? '';
    const line = rawLine.endsWith('\r') ? rawLine.slice(0, -1) : rawLine;
    const trimmed = line.trim();
    if (trimmed === '') continue;
    const tokens = trimmed.split(/\s+/);

    const old = oldFormLine(tokens);
    if (old !== null) {
      oldForm ??= { counters: {}, raw: [] };
      oldForm.counters[old.name] = old.value;
      oldForm.raw.push(line);
      continue;
    }
    flushOldForm();

    const cpu = CPU_LINE.exec(trimmed);
    if (cpu !== null) {
      const counters: Record<string, number> = {};
      let bad: string | null = null;
      // The TAB after `cpu=%-4u` is often expanded to spaces in copies (§4.2).
      for (const kv of (cpu[2] ?? '').split(/\s+/)) {
        if (kv === '') continue;
        const m = KEY_VALUE.exec(kv);
        if (m === null) {
          bad = `${JSON.stringify(kv)} is not a name=number counter`;
          break;
        }
        counters[m[1] ?? ''] = Number(m[2]);
      }
      if (bad !== null) problems.push({ line: i + 1, text: line, reason: bad });
      else if (Object.keys(counters).length === 0) problems.push({ line: i + 1, text: line, reason: 'cpu= line with no counters (cut short?)' });
      else records.push({ cpu: Number(cpu[1]), counters, raw: line });
      continue;
    }

    if (header !== null && tokens.every((t) => HEX.test(t))) {
      if (tokens.length !== header.length) {
        problems.push({
          line: i + 1,
          text: line,
          reason: `${tokens.length} hex fields under a ${header.length}-column header (line ${headerLine}); the row is cut or belongs to another table`,
        });
      } else {
        const names = header;
        const counters: Record<string, number> = {};
        tokens.forEach((t, k) => {
          counters[names[k] ?? ''] = parseInt(t, 16);
        });
        records.push({ cpu: rowIndex, counters, raw: line });
      }
      // Rows follow the possible CPUs in order (ct_cpu_seq_start), so the
      // position is the CPU index even when a row is unreadable.
      rowIndex++;
      continue;
    }

    // A header has names only, at least one of them not a hex word (a row
    // of `deadbeef` values must not open a table).
    if (tokens.every((t) => NAME.test(t)) && !tokens.every((t) => HEX.test(t))) {
      if (new Set(tokens).size !== tokens.length) {
        problems.push({ line: i + 1, text: line, reason: 'header names a column twice' });
        header = null;
        continue;
      }
      header = tokens;
      headerLine = i + 1;
      rowIndex = 0;
      continue;
    }

    const reason = tokens.every((t) => HEX.test(t))
      ? 'hex row with no header line above it (the header names the columns; they differ between kernels)'
      : 'not a statistics line (expected a header of names, a row of hex fields, cpu=N name=value… or the old name<TAB><TAB>value form)';
    problems.push({ line: i + 1, text: line, reason });
  }
  flushOldForm();
  return { records, problems };
}

/**
 * Sums every per-CPU counter over the rows. The GLOBAL_COUNTERS (`entries`)
 * are not summed: each is reported once, as the first row carrying it
 * printed it. For the ≤ 1.4.4 `conntrack -S` form the single row is CPU 0,
 * so the "sum" is CPU 0's value only.
 */
export function sumCounters(rows: readonly StatRow[]): Record<string, number> {
  const sums: Record<string, number> = {};
  for (const row of rows) {
    for (const [name, value] of Object.entries(row.counters)) {
      if (GLOBAL_COUNTERS.includes(name)) {
        if (!(name in sums)) sums[name] = value;
      } else sums[name] = (sums[name] ?? 0) + value;
    }
  }
  return sums;
}
