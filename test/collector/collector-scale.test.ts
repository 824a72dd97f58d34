// The collector takes a 250,000-entry conntrack snapshot (the table size the
// agent is designed for) and a diff on top of it, without running out of
// stack: a whole table's transitions once overflowed it through push(...spread).
import { describe, expect, it } from 'vitest';
import { parseConntrack } from '../../agent/sources/conntrack.ts';
import { Collector, type Session } from '../../collector/receive/collector.ts';
import { encode, SNAPSHOT_CHUNK } from '../../contract/protocol.ts';
import { captureLog } from '../helpers/capture-log.ts';

const ENTRIES = 250_000;
const T0 = Date.now();
const line = (i: number) =>
  `ipv4     2 tcp      6 431999 ESTABLISHED src=10.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255} dst=10.250.0.1 sport=${1024 + (i % 60000)} dport=80 src=10.250.0.1 dst=10.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255} sport=80 dport=${1024 + (i % 60000)} [ASSURED] mark=0 zone=0 use=2`;

describe('collector at scale', { timeout: 60_000 }, () => {
  it('applies a 250k-entry conntrack snapshot and a diff on it', () => {
    const { records, problems } = parseConntrack(Array.from({ length: ENTRIES }, (_, i) => line(i)).join('\n'));
    expect(problems).toEqual([]);
    expect(records).toHaveLength(ENTRIES);
    const log = captureLog();
    const collector = new Collector({ log: log.log });
    const session: Session = { node: null, remote: 'test', send: () => undefined };
    const send = (msg: Parameters<typeof encode>[0]) => collector.receive(session, encode(msg));
    send({ v: 1, type: 'hello', node: 'big', agentVersion: 'test', intervalMs: 1000, startedAt: T0 });
    const parts = Math.ceil(ENTRIES / SNAPSHOT_CHUNK);
    for (let part = 0; part < parts; part++)
      send({ v: 1, type: 'snapshot', seq: 1, time: T0 + 1_000, source: 'conntrack', part, parts, records: records.slice(part * SNAPSHOT_CHUNK, (part + 1) * SNAPSHOT_CHUNK) });
    send({ v: 1, type: 'snapshot-end', seq: 1, time: T0 + 1_000, status: [] });
    expect(log.find('snapshot applied')).toMatchObject({ node: 'big', sources: { conntrack: ENTRIES } });
    const gone = records[0];
    if (gone === undefined) throw new Error('no record');
    send({ v: 1, type: 'diff', seq: 2, time: T0 + 2_000, status: [], changes: [{ source: 'conntrack', added: [], removed: [`0|tcp|${gone.orig.src}|${gone.orig.sport}|${gone.orig.dst}|${gone.orig.dport}|`], changed: [], refreshed: [] }] });
    expect(collector.nodes.get('big')?.recordMap('conntrack').size).toBe(ENTRIES - 1);
    expect(log.lines.filter((l) => Number(l.level) >= 50)).toEqual([]);
  });
});
