// The kernel log as /dev/kmsg gives it, from this machine's ring while the
// seed-003 lab ran (test/fixtures/SOURCES.md), and the agent's read of the
// real device: as root it reads the ring without consuming it; as an
// process without CAP_SYSLOG (EPERM, kernel.dmesg_restrict=1) the source is reported
// unavailable once, with the reason, and not retried every second.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { createHostIO, type HostIO } from '../../../agent/host-io.ts';
import { NodeState } from '../../../agent/node-state.ts';
import { createRecordedIO } from '../../../agent/recorded-io.ts';
import { createSamplers } from '../../../agent/samplers.ts';
import { MAX_MARTIANS, parseKmsg } from '../../../agent/sources/kmsg.ts';
import type { KmsgMartian } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const run = promisify(execFile);
const FIXTURES = new URL('../../fixtures/kmsg/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/kmsg/${name.replace(/\.txt$/, '')}.golden.json`;
/** The line seen on this machine, quoted in the task that added this source. */
const SEEN = '4,2738,1507371119,-;IPv4: martian source 198.18.0.11 from 198.18.100.20, on dev eth0';
/** A martian line and its ll header, verbatim from the fixture. */
const PAIR = ['4,3458,1671277279,-;IPv4: martian source 198.18.0.11 from 198.18.100.20, on dev eth0', '4,3459,1671277289,-;ll header: 00000000: b2 ce e2 be bf 0f 12 88 b4 1d 2c d3 08 00'] as const;

function expectValid(records: readonly KmsgMartian[]): void {
  for (const r of records) expect(sources.kmsg.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}

describe('parseKmsg on a verbatim /dev/kmsg slice', () => {
  it('keeps the martian-source records of seed 003 (LB address 198.18.100.20), their ll header when it is the very next record, and nothing else', async () => {
    const name = 'lab-dev-kmsg-seed-003-martian-source.txt';
    const result = parseKmsg(fixture(name));
    expect(result.problems).toEqual([]);
    expectValid(result.records);
    expect(result.records.map((r) => r.seq)).toEqual([3436, 3437, 3440, 3442, 3444, 3445, 3458, 3460, 3463, 3465]);
    expect(new Set(result.records.map((r) => `${r.kind} ${r.src} ${r.dev}`))).toEqual(new Set(['martian-source 198.18.100.20 eth0']));
    // iptables mode DNATs before the routing decision: the logged destination is then the pod, not the node.
    expect(result.records.filter((r) => r.dst === '198.19.1.10').map((r) => r.seq)).toEqual([3460, 3463]);
    // Two CPUs logged 3436 and 3437 before either's ll header: which header is whose cannot be told.
    expect(result.records.filter((r) => r.llHeader === null).map((r) => r.seq)).toEqual([3436, 3437, 3444, 3445]);
    expect(result.records.find((r) => r.seq === 3458)?.llHeader).toBe('00000000: b2 ce e2 be bf 0f 12 88 b4 1d 2c d3 08 00');
    expect(result.records[0]).toMatchObject({ level: 4, facility: 0, usec: 1668798745, raw: '4,3436,1668798745,-;IPv4: martian source 198.18.0.11 from 198.18.100.20, on dev eth0' });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseKmsg line by line', () => {
  it.each<[string, string, Partial<KmsgMartian>[], number]>([
    ['the martian line seen here', `${SEEN}\n`, [{ seq: 2738, usec: 1507371119, level: 4, facility: 0, kind: 'martian-source', dst: '198.18.0.11', src: '198.18.100.20', dev: 'eth0', llHeader: null, raw: SEEN }], 0],
    ['a martian line and its ll header', `${PAIR.join('\n')}\n`, [{ seq: 3458, llHeader: '00000000: b2 ce e2 be bf 0f 12 88 b4 1d 2c d3 08 00', raw: PAIR[0] }], 0],
    ['a record with dictionary continuation lines', `${SEEN}\n SUBSYSTEM=net\n DEVICE=n2\n`, [{ seq: 2738, llHeader: null }], 0],
    ['a header with fields after the flags (the ABI allows more)', '4,2738,1507371119,-,caller=T1;IPv4: martian source 198.18.0.11 from 198.18.100.20, on dev eth0\n', [{ seq: 2738, src: '198.18.100.20' }], 0],
    // Format of ip_route_input_slow()'s martian_destination label (net/ipv4/route.c); no capture of one here.
    ['a martian destination', '4,10,20,-;IPv4: martian destination 0.0.0.0 from 10.10.191.182, dev vlan18\n', [{ kind: 'martian-destination', dst: '0.0.0.0', src: '10.10.191.182', dev: 'vlan18' }], 0],
    ['a facility other than kern (prio 30 = daemon.info), not a martian', '30,5,6,-;systemd[1]: Started foo.\n', [], 0],
    ['an ll header with no martian line before it', PAIR[1], [], 0],
    ['a dmesg line (no sequence number)', '[1507.371119] IPv4: martian source 198.18.0.11 from 198.18.100.20, on dev eth0\n', [], 1],
    ['half a header', '4,2738;IPv4: martian\n', [], 1],
    ['a repeated sequence number', `${SEEN}\n${SEEN}\n`, [{ seq: 2738 }], 1],
    ['CRLF line ends from a pasted file', `${SEEN}\r\n`, [{ seq: 2738, raw: SEEN }], 0],
  ])('%s', (_name, text, expected, problems) => {
    const result = parseKmsg(text);
    expect(result.records).toEqual(expected.map((e) => expect.objectContaining(e)));
    expect(result.problems).toHaveLength(problems);
    expectValid(result.records);
  });

  it('says which line it could not read, and why', () => {
    expect(parseKmsg(`${SEEN}\n[1507.371119] IPv4: martian source 198.18.0.11\n`).problems).toEqual([
      { line: 2, text: '[1507.371119] IPv4: martian source 198.18.0.11', reason: expect.stringContaining('dmesg output') },
    ]);
  });

  it(`keeps the newest ${MAX_MARTIANS} martian records of a ring holding more, and says how many it let go`, () => {
    const lines = Array.from({ length: MAX_MARTIANS + 44 }, (_, i) => SEEN.replace('2738', String(2738 + i)));
    const result = parseKmsg(`${lines.join('\n')}\n`);
    expect(result.records).toHaveLength(MAX_MARTIANS);
    expect(result.records[0]?.seq).toBe(2738 + 44);
    expect(result.records.at(-1)?.seq).toBe(2738 + MAX_MARTIANS + 43);
    expect(result.problems).toEqual([{ line: 44, text: lines[43], reason: `44 older martian records not kept: the kmsg source holds the last ${MAX_MARTIANS}` }]);
  });
});

const kmsgOnly = () => createSamplers().filter((s) => s.source === 'kmsg');

describe('the kmsg source on a node', () => {
  it('reads /dev/kmsg whole without consuming it (as root here): every line a record, the second read holding the first', async () => {
    const io = createHostIO();
    const first = await io.readKmsg('/dev/kmsg');
    const second = await io.readKmsg('/dev/kmsg');
    const seqs = (t: string) => t.split('\n').filter((l) => /^\d/.test(l)).map((l) => Number(l.split(',')[1]));
    expect(seqs(first).length).toBeGreaterThan(0);
    expect(parseKmsg(first).problems.filter((p) => !p.reason.includes('not kept'))).toEqual([]);
    // Records can age out of the ring between the reads, never the newest of the first.
    expect(seqs(second)).toContain(seqs(first).at(-1));
  });

  it('reports EPERM (no CAP_SYSLOG, kernel.dmesg_restrict=1) as unavailable, with the reason', async () => {
    const restrict = readFileSync('/proc/sys/kernel/dmesg_restrict', 'utf8').trim();
    expect(restrict, 'this test needs kernel.dmesg_restrict=1 to see EPERM').toBe('1');
    const script = "import { createHostIO } from './agent/host-io.ts'; createHostIO().readKmsg('/dev/kmsg').then(() => console.log('{}'), (e) => console.log(JSON.stringify({ code: e.code, message: e.message })));";
    // Root without CAP_SYSLOG, as an agent container without it runs: another uid could not even read a checkout in a 0700 temp dir.
    const { stdout } = await run('setpriv', ['--bounding-set=-syslog', '--inh-caps=-syslog', process.execPath, '--input-type=module', '-e', script], { cwd: new URL('../../..', import.meta.url).pathname });
    expect(JSON.parse(stdout)).toEqual({ code: 'SOURCE_UNAVAILABLE', message: 'cannot read /dev/kmsg: EPERM (the kernel log needs CAP_SYSLOG where kernel.dmesg_restrict=1)' });
  });

  it('says once that the kernel log cannot be read, and does not try again every second', async () => {
    let reads = 0;
    const recorded = createRecordedIO(() => new Map());
    const io: HostIO = {
      ...recorded,
      readKmsg() {
        reads++;
        return createHostIO().readKmsg('/nonexistent/kmsg');
      },
    };
    let clock = 0;
    const state = new NodeState(kmsgOnly(), io, () => clock);
    const statuses = [];
    for (; clock < 10_000; clock += 1_000) statuses.push(...(await state.tick()).statusChanges);
    expect(statuses).toEqual([expect.objectContaining({ source: 'kmsg', state: 'unavailable', reason: expect.stringContaining('/nonexistent/kmsg does not exist') })]);
    expect(reads).toBe(1);
  });

  it('replays a recorded kmsg.txt through the live sampler', async () => {
    const state = new NodeState(kmsgOnly(), createRecordedIO(() => new Map([['/dev/kmsg', fixture('lab-dev-kmsg-seed-003-martian-source.txt')]])), () => 0);
    const tick = await state.tick();
    expect(tick.statusChanges).toMatchObject([{ source: 'kmsg', state: 'ok', via: '/dev/kmsg', records: 10, problemCount: 0 }]);
  });
});
