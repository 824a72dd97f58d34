import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { compressFullIPv6, isConntrackToolsMessage, parseConntrack, parseConntrackLine } from '../../../agent/sources/conntrack.ts';
import { canonicalIp } from '../../../contract/address.ts';
import type { ConntrackEntry } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/conntrack/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/conntrack/${name.replace(/\.txt$/, '')}.golden.json`;
const keyOf = sources.conntrack.keyOf;

/** Every record decodes with the shared schema, the collector's trust boundary. */
function expectValidRecords(records: readonly ConntrackEntry[]): void {
  for (const r of records) expect(sources.conntrack.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}

/** Parses one line that must be an entry. */
function entryOf(line: string): ConntrackEntry {
  const parsed = parseConntrackLine(line);
  if ('error' in parsed) throw new Error(`${line}: ${parsed.error}`);
  return parsed;
}

const flow = (e: ConntrackEntry) =>
  `${e.orig.src}:${e.orig.sport ?? ''} -> ${e.orig.dst}:${e.orig.dport ?? ''} => ${e.reply.src}:${e.reply.sport ?? ''}`;

describe('parseConntrack on verbatim outputs', () => {
  it('reads the k8s#91216 TIME_WAIT excerpt and reports the ellipsis and the half entry by line number', async () => {
    const name = 'k8s-91216-e2e-dns-tcp-timewait-excerpt.txt';
    const text = fixture(name);
    const result = parseConntrack(text);
    const lines = text.split('\n');
    expect(result.problems.map((p) => [p.line, p.text])).toEqual([
      [1, lines[0]],
      [2, lines[1]],
    ]);
    expect(result.problems[0]?.text).toBe('... ');
    expect(result.problems[1]?.reason).toMatch(/half entry/);
    const { records } = result;
    expectValidRecords(records);
    expect(records).toHaveLength(5);
    for (const e of records) {
      expect(e).toMatchObject({ family: 'ipv4', proto: 'tcp', protoNum: 6, state: 'TIME_WAIT', assured: true, unreplied: false, mark: 0, zone: 0, offload: 'none' });
    }
    expect(records.map((e) => e.timeout)).toEqual([56, 79, 28, 34, 54]);
    const dns = records.filter((e) => e.orig.dst === '10.0.0.10' && e.orig.dport === 53);
    expect(dns).toHaveLength(4);
    expect(dns.map((e) => e.reply.src)).toEqual(['10.64.1.6', '10.64.1.6', '10.64.2.4', '10.64.1.6']);
    const loopback = records.filter((e) => e.orig.src === '127.0.0.1');
    expect(loopback.map(flow)).toEqual(['127.0.0.1:43938 -> 127.0.0.1:38583 => 127.0.0.1:38583']);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads the clean netlink#876 `conntrack -L`: two ESTABLISHED and one CLOSE_WAIT', async () => {
    const name = 'netlink-876-conntrack-L-established-closewait.txt';
    const result = parseConntrack(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map((e) => [e.timeout, e.state, e.orig.src, e.orig.dst, e.orig.dport])).toEqual([
      [431981, 'ESTABLISHED', '172.20.36.14', '172.31.2.45', 17652],
      [431952, 'ESTABLISHED', '172.20.36.14', '172.31.2.45', 17652],
      [52, 'CLOSE_WAIT', '172.20.36.14', '172.31.2.45', 5000],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads offloaded flows with no timeout and no state, and skips the conntrack-tools trailer', async () => {
    const name = 'ubicloud-pr1009-flowtable-offload-no-timeout.txt';
    const result = parseConntrack(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records).toHaveLength(6);
    const offloaded = result.records.filter((e) => e.offload === 'sw');
    expect(offloaded).toHaveLength(5);
    for (const e of offloaded) expect(e).toMatchObject({ timeout: null, state: null, assured: false, orig: { dport: 5432 } });
    const normal = result.records.filter((e) => e.offload === 'none');
    expect(normal.map((e) => [e.timeout, e.state, e.assured, e.orig.dport])).toEqual([[427591, 'ESTABLISHED', true, 22]]);
    // Every flow is DNAT'd: the reply comes from the backend, not the public address.
    for (const e of result.records) expect([e.orig.dst, e.reply.src]).toEqual(['178.63.116.246', '172.16.217.175']);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads seed 002 procfs lines: four unreplied SYN_SENT entries, one a NodePort DNAT', async () => {
    const name = 'seed-002-nf-conntrack-syn-sent.txt';
    const result = parseConntrack(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records).toHaveLength(4);
    for (const e of result.records) expect(e).toMatchObject({ family: 'ipv4', state: 'SYN_SENT', unreplied: true, assured: false, mark: 0, zone: 0 });
    expect(result.records.map((e) => e.timeout)).toEqual([107, 119, 103, 104]);
    expect(flow(result.records[1] as ConntrackEntry)).toBe('10.23.31.87:59462 -> 10.20.79.226:31199 => 10.27.1.246:80');
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('follows seed 002 port reuse: the same tuple goes from TIME_WAIT to an unreplied SYN_SENT, and other lines are problems', async () => {
    const name = 'seed-002-timewait-to-synsent-timeline.txt';
    const text = fixture(name);
    const result = parseConntrack(text);
    // The date lines and ipvsadm's TCP lines are not conntrack output.
    expect(result.problems.map((p) => p.line)).toEqual([1, 2, 4, 5, 7, 8, 10, 11]);
    expect(result.problems.map((p) => p.text.slice(0, 4))).toEqual(['2020', 'TCP ', '2020', 'TCP ', '2020', 'TCP ', '2020', 'TCP ']);
    const { records } = result;
    expectValidRecords(records);
    expect(records.map((e) => [e.timeout, e.state, e.unreplied, e.assured])).toEqual([
      [60, 'TIME_WAIT', false, true],
      [58, 'TIME_WAIT', false, true],
      [119, 'SYN_SENT', true, false],
      [117, 'SYN_SENT', true, false],
    ]);
    for (const e of records) expect(flow(e)).toBe('10.23.31.87:58578 -> 10.20.79.226:31199 => 10.27.1.249:80');
    // One identity throughout: the diff sees a state change, not a new entry.
    expect(new Set(records.map(keyOf)).size).toBe(1);
    expect(sources.conntrack.sameState(records[1] as ConntrackEntry, records[2] as ConntrackEntry)).toBe(false);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseConntrack on this kernel (lab-capture.sh)', () => {
  const proc = parseConntrack(fixture('lab-proc-nf-conntrack.txt'));
  const extended = parseConntrack(fixture('lab-conntrack-L-extended.txt'));
  const plain = parseConntrack(fixture('lab-conntrack-L.txt'));
  const byKey = (r: ReturnType<typeof parseConntrack>) => new Map(r.records.map((e) => [keyOf(e), e]));

  it.each([
    ['lab-proc-nf-conntrack.txt', proc],
    ['lab-conntrack-L-extended.txt', extended],
    ['lab-conntrack-L.txt', plain],
  ])('reads every line of %s', async (name, result) => {
    expect(result.problems).toEqual([]);
    expect(result.records).toHaveLength(11);
    expectValidRecords(result.records);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('gives the same entries, keys and states from procfs, `conntrack -L -o extended` and `conntrack -L`', () => {
    const p = byKey(proc);
    for (const other of [extended, plain]) {
      const o = byKey(other);
      expect([...o.keys()].sort()).toEqual([...p.keys()].sort());
      for (const [key, e] of p) {
        const same = o.get(key);
        expect(same && sources.conntrack.sameState(e, same), key).toBe(true);
        expect(same?.family).toBe(e.family);
      }
    }
  });

  it('canonicalises procfs full-length IPv6 to the compressed form conntrack -L prints', () => {
    const v6 = (r: ReturnType<typeof parseConntrack>) =>
      r.records.filter((e) => e.family === 'ipv6').map((e) => [e.orig.src, e.orig.dst, e.orig.dport, e.reply.src, e.reply.dst, e.reply.sport]).sort();
    expect(v6(proc)).toEqual([
      ['fd00:244::5', 'fd00:96::10', 80, 'fd00:244::5', 'fd00:244::5', 8080],
      ['fd00::1', 'fd00::a', 443, 'fd00::a', 'fd00::1', 443],
    ]);
    expect(v6(plain)).toEqual(v6(proc));
    expect(v6(extended)).toEqual(v6(proc));
  });

  it('reads the protocol-specific parts: icmp and gre identities, the sctp state, a zone, the unreplied NodePort SYN', () => {
    const find = (pred: (e: ConntrackEntry) => boolean) => proc.records.filter(pred);
    expect(find((e) => e.proto === 'icmp').map((e) => [e.protoNum, e.state, e.orig.extra, e.reply.extra, e.unreplied])).toEqual([
      [1, null, 'type=8 code=0 id=1234', 'type=0 code=0 id=1234', true],
    ]);
    // procfs prints GRE's `timeout=0, stream_timeout=0` where a state would go.
    expect(find((e) => e.proto === 'gre').map((e) => [e.protoNum, e.timeout, e.state, e.orig.extra, e.reply.extra])).toEqual([
      [47, 99, null, 'srckey=0x10 dstkey=0x20', 'srckey=0x20 dstkey=0x10'],
    ]);
    expect(find((e) => e.proto === 'sctp').map((e) => [e.protoNum, e.state, e.orig.sport, e.orig.dport])).toEqual([[132, 'ESTABLISHED', 36412, 38412]]);
    expect(find((e) => e.zone !== 0).map((e) => [e.zone, e.proto, e.orig.dst, e.reply.src])).toEqual([[5, 'udp', '10.96.0.20', '10.244.0.3']]);
    expect(find((e) => e.unreplied && e.proto === 'tcp').map(flow)).toEqual(['10.23.31.87:58578 -> 10.20.79.226:31199 => 10.27.1.249:80']);
    // Real traffic through the Service DNAT: the client closed first.
    const [closed] = find((e) => e.state === 'TIME_WAIT');
    expect([closed?.orig.src, closed?.orig.dst, closed?.orig.dport, closed?.reply.src, closed?.reply.sport, closed?.assured]).toEqual([
      '10.244.0.5', '10.96.0.10', 80, '10.244.0.5', 8080, true,
    ]);
  });

  it('reads `conntrack -E` events, [USERSPACE] suffixes included, as the states of one connection over time', async () => {
    const name = 'lab-conntrack-E.txt';
    const result = parseConntrack(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records).toHaveLength(32);
    // The connection procfs shows in TIME_WAIT, event by event.
    const sport = proc.records.find((e) => e.state === 'TIME_WAIT')?.orig.sport;
    const closed = result.records.filter((e) => e.orig.sport === sport && e.orig.dport === 80);
    expect(closed.map((e) => e.state)).toEqual(['SYN_SENT', 'SYN_RECV', 'ESTABLISHED', 'FIN_WAIT', 'LAST_ACK', 'TIME_WAIT']);
    expect(closed.map((e) => e.unreplied)).toEqual([true, false, false, false, false, false]);
    expect(new Set(closed.map(keyOf)).size).toBe(1);
    // The entries made with conntrack -I carry conntrack-tools' [USERSPACE] suffix.
    expect(result.records.filter((e) => e.raw.includes('[USERSPACE]')).map((e) => e.proto)).toEqual(['tcp', 'icmp', 'gre', 'sctp', 'udp', 'tcp']);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

const TCP = 'tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=443 src=10.244.1.7 dst=10.0.0.1 sport=8443 dport=40000 [ASSURED] mark=0 use=1';

describe('parseConntrackLine', () => {
  it.each<[string, string, Partial<ConntrackEntry>]>([
    ['conntrack -L', TCP, { family: 'ipv4', timeout: 431999, state: 'ESTABLISHED', assured: true, mark: 0, zone: 0 }],
    [
      'an -E event tag, with no timeout or state on a DESTROY',
      '[DESTROY] tcp      6 src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=443 src=10.244.1.7 dst=10.0.0.1 sport=8443 dport=40000 [ASSURED]',
      { timeout: null, state: null, assured: true, mark: null },
    ],
    [
      'the event time of -E -o timestamp',
      '[1591610302.123456]\t    [NEW] udp      17 30 src=10.0.0.1 dst=10.96.0.10 sport=5000 dport=53 [UNREPLIED] src=10.244.0.3 dst=10.0.0.1 sport=53 dport=5000',
      { proto: 'udp', protoNum: 17, timeout: 30, state: null, unreplied: true },
    ],
    [
      'hardware offload',
      'tcp      6 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 [HW_OFFLOAD] mark=0 use=2',
      { offload: 'hw', assured: false, timeout: null },
    ],
    [
      'a direction-specific zone, the only zone printed',
      'ipv4     2 udp      17 20 src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 zone-orig=7 src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 mark=3 use=2',
      { zone: 7, mark: 3 },
    ],
    [
      'secctx, helper, id, labels and -o timestamp times',
      'tcp      6 117 SYN_SENT src=10.0.0.1 dst=10.0.0.2 sport=1 dport=21 [UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=21 dport=1 mark=9 secctx=system_u:object_r:unlabeled_t:s0 zone=2 delta-time=4 [start=Mon Jun  8 17:58:22 2020] helper=ftp use=1 id=3172161536 labels=a,b',
      { mark: 9, zone: 2, state: 'SYN_SENT', unreplied: true },
    ],
    [
      'the 2.6.3x procfs line with secmark',
      'ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 [ASSURED] mark=0 secmark=0 use=2',
      { timeout: 431999, mark: 0, zone: 0 },
    ],
    [
      'a protocol without ports',
      'ipv4     2 unknown  41 599 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 mark=0 zone=0 use=2',
      { proto: 'unknown', protoNum: 41, state: null, orig: { src: '10.0.0.1', dst: '10.0.0.2', sport: null, dport: null, extra: null } },
    ],
    [
      'DCCP with its own state names',
      'dccp     33 3599 PARTOPEN src=10.0.0.1 dst=10.0.0.2 sport=1 dport=2 src=10.0.0.2 dst=10.0.0.1 sport=2 dport=1 use=1',
      { proto: 'dccp', state: 'PARTOPEN', mark: null },
    ],
    [
      'an IPv6 icmpv6 entry without layer-3 columns (family from the address)',
      'icmpv6   58 29 src=fe80::1 dst=ff02::1 type=128 code=0 id=7 src=ff02::1 dst=fe80::1 type=129 code=0 id=7 mark=0 use=1',
      { family: 'ipv6', protoNum: 58, orig: { src: 'fe80::1', dst: 'ff02::1', sport: null, dport: null, extra: 'type=128 code=0 id=7' } },
    ],
  ])('reads %s', (_what, line, expected) => {
    const e = entryOf(line);
    expect(e).toMatchObject(expected);
    expect(e.raw).toBe(line);
    expect(sources.conntrack.schema.decode(e, 'record').ok).toBe(true);
  });

  it('keeps an icmp id= in the tuple apart from the -o id identifier at the end', () => {
    const e = entryOf('icmp     1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=5 src=10.0.0.2 dst=10.0.0.1 type=0 code=0 id=5 mark=0 use=1 id=123456');
    expect([e.orig.extra, e.reply.extra]).toEqual(['type=8 code=0 id=5', 'type=0 code=0 id=5']);
  });

  it.each<[string, string, RegExp]>([
    ['a line cut inside the reply tuple', TCP.slice(0, TCP.indexOf(' sport=8443') - 3), /reply dst= is not an IP address/],
    ['a line cut before the reply tuple', TCP.slice(0, TCP.indexOf(' src=10.244')), /reply tuple missing/],
    ['a reply tuple cut after dst=', TCP.slice(0, TCP.indexOf(' sport=8443')), /shorter than the original/],
    ['an annotation after the entry', `${TCP} <-- web-0`, /unexpected "<--" after the reply tuple/],
    ['a redacted address', TCP.replace('src=10.0.0.1', 'src=10.x.x.x'), /original src= is not an IP address/],
    ['a non-numeric mark', TCP.replace('mark=0', 'mark=zero'), /mark= is not a number/],
    ['IPv6 addresses under ipv4', `ipv4     2 ${TCP.replaceAll('10.0.0.1', 'fd00::1').replaceAll('10.96.0.10', 'fd00::a').replaceAll('10.244.1.7', 'fd00::7')}`, /ipv4 entry with ipv6 addresses/],
    ['a wrong layer-3 number', `ipv4     10 ${TCP}`, /expected 2 after ipv4/],
    ['an unknown flag', TCP.replace('[ASSURED]', '[CONFIRMED]'), /unknown flag "\[CONFIRMED\]"/],
    ['a port out of range', TCP.replace('sport=40000', 'sport=70000'), /original sport= is not a port/],
    ['ipvsadm output', 'TCP 00:59  SYN_RECV    10.23.31.87:58578  10.20.79.226:31199 10.27.1.249:80', /expected a protocol name/],
  ])('reports %s', (_what, line, reason) => {
    const parsed = parseConntrackLine(line);
    expect('error' in parsed ? parsed.error : 'parsed').toMatch(reason);
    expect(parseConntrack(`${TCP}\n${line}\n`).problems).toEqual([{ line: 2, text: line, reason: 'error' in parsed ? parsed.error : '' }]);
  });

  it('never throws on a line cut at any point, and reports every cut before the last port', () => {
    // A cut inside the last port or in the trailer can leave a complete-looking
    // entry; any earlier cut cannot.
    const lastPort = TCP.lastIndexOf('dport=') + 'dport='.length;
    for (let i = 0; i < TCP.length; i++) {
      const cut = TCP.slice(0, i);
      const parsed = parseConntrackLine(cut);
      if (i <= lastPort) expect('error' in parsed, cut).toBe(true);
    }
  });

  it('skips conntrack-tools trailer and error lines in a capture, wherever stderr put them', () => {
    const trailer = 'conntrack v1.4.6 (conntrack-tools): 6 flow entries have been shown.';
    const failed = "conntrack v1.4.4 (conntrack-tools): Operation failed: such conntrack doesn't exist";
    expect(isConntrackToolsMessage(trailer)).toBe(true);
    expect(isConntrackToolsMessage(TCP)).toBe(false);
    const result = parseConntrack(`${trailer}\n${failed}\n\n${TCP}\r\n`);
    expect(result.problems).toEqual([]);
    expect(result.records.map((e) => e.raw)).toEqual([TCP]);
    // Alone, the line parser still refuses it: it is not an entry.
    expect('error' in parseConntrackLine(trailer)).toBe(true);
  });
});

describe('compressFullIPv6', () => {
  const full = (groups: readonly number[]) => groups.map((g) => g.toString(16).padStart(4, '0')).join(':');
  it.each([
    [[0, 0, 0, 0, 0, 0, 0, 0]],
    [[0, 0, 0, 0, 0, 0, 0, 1]],
    [[0xfe80, 0, 0, 0, 0xf03e, 0xb3ff, 0xfe46, 0x64c4]],
    [[0xfd00, 0, 0, 1, 0, 0, 0, 0]],
    [[1, 0, 0, 2, 0, 0, 3, 4]],
    [[1, 0, 2, 0, 3, 0, 4, 0]],
    [[0, 0, 0, 0, 0, 0xffff, 0x0a00, 0x0001]],
    [[0x2001, 0xdb8, 0, 0xf101, 0, 0, 0, 2]],
  ])('gives canonicalIp()`s answer for %j', (groups) => {
    const text = full(groups);
    expect(compressFullIPv6(text)).toBe(canonicalIp(text));
  });

  it('agrees with canonicalIp() on random addresses with zero runs', () => {
    let seed = 42;
    const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let n = 0; n < 2000; n++) {
      const groups = Array.from({ length: 8 }, () => (rand() < 0.5 ? 0 : Math.floor(rand() * 0x10000)));
      const text = full(groups);
      expect(compressFullIPv6(text)).toBe(canonicalIp(text));
    }
  });

  it.each(['fd00::1', 'FD00:0000:0000:0000:0000:0000:0000:0001', 'fd00:0000:0000:0000:0000:0000:0000:000g', '10.0.0.1'])('leaves %s to canonicalIp()', (text) => {
    expect(compressFullIPv6(text)).toBeNull();
  });
});
