import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GLOBAL_COUNTERS, parseConntrackStat, sumCounters } from '../../../agent/sources/conntrack-stat.ts';
import type { StatRow } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/conntrack-stat/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/conntrack-stat/${name.replace(/\.txt$/, '')}.golden.json`;

function expectValidRecords(records: readonly StatRow[]): void {
  for (const r of records) expect(sources['conntrack-stat'].schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}
const column = (rows: readonly StatRow[], name: string) => rows.map((r) => r.counters[name]);
const cpusWith = (rows: readonly StatRow[], name: string) => rows.filter((r) => (r.counters[name] ?? 0) > 0).map((r) => r.cpu);

describe('parseConntrackStat on verbatim outputs', () => {
  it('reads the old-kernel /proc/net/stat/nf_conntrack by header name, keeping the global entries column per row', async () => {
    const name = 'netdata-161-proc-stat-nf-conntrack-searched-header.txt';
    const result = parseConntrackStat(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    const rows = result.records;
    expect(rows.map((r) => r.cpu)).toEqual([0, 1, 2]);
    expect(column(rows, 'entries')).toEqual([1822, 1822, 1822]);
    expect(rows[0]?.counters).toMatchObject({
      searched: 123791103,
      found: 2349065827,
      insert_failed: 0,
      drop: 1338,
      icmp_error: 135761,
      delete_list: 0x005a1da9,
      search_restart: 0,
    });
    expect(Object.keys(rows[0]?.counters ?? {})).toHaveLength(17);
    const sums = sumCounters(rows);
    expect(sums.drop).toBe(1346);
    expect(sums.entries).toBe(1822);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads `conntrack -S` per-CPU lines with the TAB expanded: insert_failed and drop on cpu=7 only', async () => {
    const name = 'telegraf-8955-conntrack-S-insert-failed-drop.txt';
    const result = parseConntrackStat(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    const rows = result.records;
    expect(rows.map((r) => r.cpu)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    // The trailing space of each `%s=%u ` line is kept in raw.
    for (const r of rows) expect(r.raw.endsWith(' ')).toBe(true);
    expect(cpusWith(rows, 'insert_failed')).toEqual([7]);
    expect(cpusWith(rows, 'drop')).toEqual([7]);
    expect(sumCounters(rows)).toMatchObject({ invalid: 24752, ignore: 1362472446, error: 920, search_restart: 266520, insert_failed: 1, drop: 1 });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseConntrackStat on this kernel (../conntrack/lab-capture.sh)', () => {
  it('reads the modern nf_conntrack table (clashres, chainlength) and agrees with conntrack -S taken with it', async () => {
    const name = 'lab-proc-stat-nf-conntrack.txt';
    const proc = parseConntrackStat(fixture(name));
    expect(proc.problems).toEqual([]);
    expectValidRecords(proc.records);
    expect(proc.records.map((r) => r.cpu)).toEqual([0, 1]);
    expect(Object.keys(proc.records[0]?.counters ?? {})).toEqual([
      'entries', 'clashres', 'found', 'new', 'invalid', 'ignore', 'delete', 'chainlength', 'insert', 'insert_failed',
      'drop', 'early_drop', 'icmp_error', 'expect_new', 'expect_create', 'expect_delete', 'search_restart',
    ]);
    // The namespace held 11 entries; the 6 `conntrack -I` inserts ran on one CPU.
    expect(column(proc.records, 'entries')).toEqual([11, 11]);
    expect(sumCounters(proc.records)).toMatchObject({ entries: 11, insert: 6 });

    const cli = parseConntrackStat(fixture('lab-conntrack-S.txt'));
    expect(cli.problems).toEqual([]);
    expect(cli.records.map((r) => r.cpu)).toEqual([0, 1]);
    expect(cli.records[0]?.raw).toContain('\t');
    expect(Object.keys(cli.records[0]?.counters ?? {})).toContain('chaintoolong');
    expect(column(cli.records, 'insert')).toEqual(column(proc.records, 'insert'));
    await expect(JSON.stringify(proc, null, 2) + '\n').toMatchFileSnapshot(golden(name));
    await expect(JSON.stringify(cli, null, 2) + '\n').toMatchFileSnapshot(golden('lab-conntrack-S.txt'));
  });

  it('reads /proc/net/stat/rt_cache with its own header, in_martian_src included', async () => {
    const name = 'lab-proc-stat-rt-cache.txt';
    const result = parseConntrackStat(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map((r) => r.cpu)).toEqual([0, 1]);
    expect(column(result.records, 'in_martian_src')).toEqual([0x9, 0x1b]);
    expect(column(result.records, 'entries')).toEqual([8, 8]);
    expect(sumCounters(result.records)).toMatchObject({ entries: 8, in_martian_src: 36, in_slow_tot: 0x143 + 0x160 });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseConntrackStat edge cases', () => {
  it('reads the 2.6.3x 16-column table with its trailing space', () => {
    const header = 'entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete';
    const row = '00000010  00000001 00000002 00000003 00000004 00000005 00000006 00000007 00000008 00000009 0000000a 0000000b 0000000c  0000000d 0000000e 0000000f ';
    const { records, problems } = parseConntrackStat(`${header}\n${row}\n${row}\n`);
    expect(problems).toEqual([]);
    expect(records.map((r) => [r.cpu, r.counters.entries, r.counters.drop, r.counters.expect_delete, r.raw])).toEqual([
      [0, 16, 10, 15, row],
      [1, 16, 10, 15, row],
    ]);
  });

  it('reads the conntrack-tools ≤ 1.4.4 `name\\t\\tvalue` form as CPU 0 alone, not a sum', () => {
    const counters: [string, number][] = [['entries', 1234], ['searched', 99], ['found', 7], ['drop', 3]];
    const lines = counters.map(([name, value]) => `${name.padEnd(10)}\t\t${String(value).padEnd(8)}`);
    const { records, problems } = parseConntrackStat(`${lines.join('\n')}\n`);
    expect(problems).toEqual([]);
    expect(records).toEqual([{ cpu: 0, counters: Object.fromEntries(counters), raw: lines.join('\n') }]);
  });

  it('keys rows by each header when two tables are pasted one after the other', () => {
    const text = fixture('lab-proc-stat-nf-conntrack.txt') + fixture('lab-proc-stat-rt-cache.txt');
    const { records, problems } = parseConntrackStat(text);
    expect(problems).toEqual([]);
    expect(records.map((r) => [r.cpu, 'clashres' in r.counters, 'in_martian_src' in r.counters])).toEqual([
      [0, true, false],
      [1, true, false],
      [0, false, true],
      [1, false, true],
    ]);
  });

  it.each<[string, string, RegExp]>([
    ['a hex row with no header above it', '0000071e  0760e6ff 8c03e663', /no header line above it/],
    ['a cut row', 'entries  searched found\n0000071e  0760e6ff', /2 hex fields under a 3-column header \(line 1\)/],
    ['a cpu line with a foreign token', 'cpu=0           found=0 invalid=x', /"invalid=x" is not a name=number counter/],
    ['a cpu line with nothing after it', 'cpu=3   ', /no counters/],
    ['an error message', 'conntrack v1.4.7 (conntrack-tools): Operation failed: invalid parameters', /not a statistics line/],
  ])('reports %s', (_what, text, reason) => {
    const { records, problems } = parseConntrackStat(`${text}\n`);
    expect(records).toEqual([]);
    const last = problems.at(-1);
    expect(last?.line).toBe(text.split('\n').length);
    expect(last?.reason).toMatch(reason);
  });

  it('sums per-CPU counters but reports the global entries count once', () => {
    expect(GLOBAL_COUNTERS).toEqual(['entries']);
    const rows: StatRow[] = [
      { cpu: 0, counters: { entries: 50, drop: 1, found: 2 }, raw: '' },
      { cpu: 1, counters: { entries: 50, drop: 4 }, raw: '' },
    ];
    expect(sumCounters(rows)).toEqual({ entries: 50, drop: 5, found: 2 });
    expect(sumCounters([])).toEqual({});
  });
});
