// A conntrack table dropping flows, over hand-built samples of
// /proc/net/stat/nf_conntrack: netdata#161's verbatim table
// (test/fixtures/timelines/conntrack-pressure-drops) with CPU 0's counters
// moved, and the count/max sysctls around it. Beside the drops: flat
// counters, a table that stays high without drops (one warning, never an
// error, not one per sample), totals read once (a snapshot is not a rise),
// and a counter that reads lower.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import type { FindingLine } from '../../../../collector/detection/aggregate.ts';
import { NodeSteps, type Outputs } from '../../../helpers/node-steps.ts';

const T0 = Date.parse('2016-04-03T10:00:00Z');
const at = (s: number) => T0 + s * 1000;
const iso = (s: number) => new Date(at(s)).toISOString();

const STAT = readFileSync(new URL('../../../fixtures/timelines/conntrack-pressure-drops/node-a/2016-04-03T10:00:00Z/stat-nf_conntrack.txt', import.meta.url), 'utf8');
const [HEADER = '', CPU0 = '', ...OTHERS] = STAT.trimEnd().split('\n');
const COLUMNS = HEADER.trim().split(/\s+/);
const hex = (n: number) => n.toString(16).padStart(8, '0');

/** The recorded table with CPU 0's counters raised by `rise` (column name -> amount); the other CPUs as recorded. */
function cpu0(rise: Readonly<Record<string, number>> = {}): string {
  const fields = CPU0.split(/(\s+)/);
  // Fields and the runs of spaces between them alternate, so the line keeps its own spacing.
  for (const [name, by] of Object.entries(rise)) {
    const i = COLUMNS.indexOf(name) * 2;
    fields[i] = hex(parseInt(fields[i] ?? '0', 16) + by);
  }
  return fields.join('');
}
const stat = (rise: Readonly<Record<string, number>> = {}) => [HEADER, cpu0(rise), ...OTHERS].join('\n') + '\n';
const sysctl = (count: number, max = 2048) => `kernel.osrelease = 4.4.0\nnet.netfilter.nf_conntrack_count = ${count}\nnet.netfilter.nf_conntrack_max = ${max}\n`;
const sample = (count: number | null, rise: Readonly<Record<string, number>> = {}): Outputs => ({ 'conntrack-stat': stat(rise), ...(count === null ? {} : { sysctl: sysctl(count) }) });

/** One sample a second, unless a sample gives its own second. */
function run(samples: readonly (Outputs | [seconds: number, outputs: Outputs])[]): FindingLine[] {
  const n = new NodeSteps('node-a');
  samples.forEach((o, i) => (Array.isArray(o) ? n.step(at(o[0]), o[1]) : n.step(at(i), o)));
  n.detection.flush(at(3600));
  return n.of('conntrack-pressure');
}

interface Expected {
  readonly severity: 'error' | 'warning';
  readonly time: number;
  readonly details: Readonly<Record<string, number | null>>;
  /** Evidence as [source, raw, sample second]. */
  readonly evidence: readonly [string, string, number][];
  readonly summary: string;
}

const COUNT = (n: number) => `net.netfilter.nf_conntrack_count = ${n}`;
const MAX = 'net.netfilter.nf_conntrack_max = 2048';

describe('conntrack-pressure', () => {
  it.each<[string, (Outputs | [number, Outputs])[], Expected[]]>([
    [
      'the recorded timeline: 89% full at the first read (a warning), then CPU 0 counting insert_failed +3 and drop +11 (an error)',
      [sample(1822), sample(2040, { insert_failed: 3, drop: 11 })],
      [
        { severity: 'warning', time: at(0), details: { count: 1822, max: 2048 }, evidence: [['sysctl', COUNT(1822), 0], ['sysctl', MAX, 0]], summary: 'the conntrack table on node-a is 89% full (1822/2048)' },
        {
          severity: 'error',
          time: at(1),
          details: { count: 2040, max: 2048, insert_failed: 3, drop: 11 },
          evidence: [['conntrack-stat', cpu0(), 0], ['conntrack-stat', cpu0({ insert_failed: 3, drop: 11 }), 1], ['sysctl', COUNT(2040), 1], ['sysctl', MAX, 0]],
          summary: 'conntrack is dropping flows on node-a: insert_failed +3, drop +11 since the last sample (table 100% full)',
        },
      ],
    ],
    [
      'insert_failed rising on a table far from full (the SNAT port race)',
      [sample(200), sample(210), sample(205, { insert_failed: 2 })],
      [
        {
          severity: 'error',
          time: at(2),
          details: { count: 205, max: 2048, insert_failed: 2 },
          evidence: [['conntrack-stat', cpu0(), 0], ['conntrack-stat', cpu0({ insert_failed: 2 }), 2], ['sysctl', COUNT(205), 2], ['sysctl', MAX, 0]],
          summary: 'conntrack is dropping flows on node-a: insert_failed +2 since the last sample (table 10% full)',
        },
      ],
    ],
    [
      'early_drop rising where the count and max sysctls are not read: no claim about how full the table is',
      [sample(null), sample(null, { early_drop: 40 })],
      [
        {
          severity: 'error',
          time: at(1),
          details: { count: null, max: null, early_drop: 40 },
          evidence: [['conntrack-stat', cpu0(), 0], ['conntrack-stat', cpu0({ early_drop: 40 }), 1]],
          summary: 'conntrack is dropping flows on node-a: early_drop +40 since the last sample',
        },
      ],
    ],
    [
      'a table crossing 80% with no drops, then staying there while its count moves: one warning, at the crossing',
      [sample(1500), sample(1700), sample(1720), sample(1690), sample(1800)],
      [{ severity: 'warning', time: at(1), details: { count: 1700, max: 2048 }, evidence: [['sysctl', COUNT(1700), 1], ['sysctl', MAX, 0]], summary: 'the conntrack table on node-a is 83% full (1700/2048)' }],
    ],
    [
      // Two minutes apart, so the second is logged at once rather than folded into the first's repeat count.
      'a table crossing 80%, falling back, and crossing again: a warning each time it crosses',
      [sample(1500), sample(1700), sample(1500), [120, sample(1750)]],
      [
        { severity: 'warning', time: at(1), details: { count: 1700, max: 2048 }, evidence: [['sysctl', COUNT(1700), 1], ['sysctl', MAX, 0]], summary: 'the conntrack table on node-a is 83% full (1700/2048)' },
        { severity: 'warning', time: at(120), details: { count: 1750, max: 2048 }, evidence: [['sysctl', COUNT(1750), 120], ['sysctl', MAX, 0]], summary: 'the conntrack table on node-a is 85% full (1750/2048)' },
      ],
    ],
  ])('reports %s', (_name, samples, expected) => {
    const found = run(samples);
    expect(found.map((f) => ({ severity: f.severity, time: f.time, node: f.node, service: f.service, tuple: f.tuple, endpoint: f.endpoint, details: f.details, summary: f.summary }))).toEqual(
      expected.map((x) => ({ severity: x.severity, time: x.time, node: 'node-a', service: null, tuple: null, endpoint: null, details: x.details, summary: x.summary })),
    );
    found.forEach((f, i) => expect(f.evidence.map((e) => [e.source, e.raw, e.time])).toEqual(expected[i]?.evidence.map(([source, raw, s]) => [source, raw, iso(s)])));
  });

  it.each<[string, Outputs[]]>([
    ['counters flat on a half-full table whose count moves every sample', [sample(1000), sample(1010), sample(990), sample(1024)]],
    ["one sample only, with totals since boot (CPU 0's drop is 0x53a): a snapshot is not a rise", [sample(1000, { insert_failed: 500 })]],
    ['a counter reading lower (wrapped or reset), on a half-full table', [sample(1000, { drop: 5 }), sample(1000, { drop: 0 })]],
    ['other columns moving (new, insert, delete), not the drop counters', [sample(1000), sample(1001, { new: 90, insert: 90, delete: 80 })]],
  ])('stays silent on %s', (_name, samples) => {
    expect(run(samples)).toEqual([]);
  });

  it('never calls a high table without drops an error, however long it stays there', () => {
    const found = run([sample(1900), ...Array.from({ length: 30 }, (_, i) => sample(1900 + (i % 7) * 10))]);
    expect(found.map((f) => [f.severity, f.time, f.count])).toEqual([['warning', at(0), 1]]);
  });
});
