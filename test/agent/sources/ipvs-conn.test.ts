import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseIpvsConn, parseIpvsConnLine } from '../../../agent/sources/ipvs-conn.ts';
import type { IpvsConnection } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const fixture = (path: string): string => readFileSync(new URL(`../../fixtures/${path}`, import.meta.url), 'utf8');
const golden = (path: string): string => `../../fixtures/${path.replace(/\.txt$/, '')}.golden.json`;
const spec = sources['ipvs-conn'];

function expectValidRecords(records: readonly IpvsConnection[]): void {
  for (const r of records) expect(spec.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}
const ep = (e: { address: string; port: number }) => `${e.address}:${e.port}`;
const row = (c: IpvsConnection) => [c.proto, c.state, c.expiresSeconds, ep(c.client), ep(c.virtual), ep(c.destination), c.template];

function connectionOf(line: string): IpvsConnection {
  const parsed = parseIpvsConnLine(line);
  if ('error' in parsed) throw new Error(`${line}: ${parsed.error}`);
  return parsed;
}

describe('parseIpvsConn on verbatim outputs', () => {
  it('reads grepped `ipvsadm -lnc` lines with a virtual field wider than its column', async () => {
    const path = 'ipvsadm-lnc/calico-4851-syn-recv-grep.txt';
    const result = parseIpvsConn(fixture(path));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map(row)).toEqual([
      ['TCP', 'ESTABLISHED', 899, '10.148.20.23:59622', '10.148.201.234:8848', '10.178.104.8:8848', false],
      ['TCP', 'ESTABLISHED', 899, '10.148.20.23:59619', '10.148.201.234:8848', '10.178.104.8:8848', false],
      ['TCP', 'SYN_RECV', 57, '10.148.20.23:59623', '10.148.201.234:8848', '10.178.166.153:8848', false],
      ['TCP', 'SYN_RECV', 57, '10.148.20.23:59621', '10.148.201.234:8848', '10.178.135.4:8848', false],
      ['TCP', 'SYN_RECV', 57, '10.148.20.23:59618', '10.148.201.234:8848', '10.178.135.4:8848', false],
      ['TCP', 'SYN_RECV', 57, '10.148.20.23:59620', '10.148.201.234:8848', '10.178.166.153:8848', false],
    ]);
    expect(result.records.at(-1)?.raw.endsWith('10.178.166.153:8848 ')).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(path));
  });

  it('skips the title and header lines of a full listing', async () => {
    const path = 'ipvsadm-lnc/lvs-lab-gentleduo-established-finwait.txt';
    const result = parseIpvsConn(fixture(path));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map(row)).toEqual([
      ['TCP', 'ESTABLISHED', 231, '192.168.56.1:56954', '192.168.56.200:80', '192.168.56.102:80', false],
      ['TCP', 'FIN_WAIT', 118, '192.168.56.1:57322', '192.168.56.200:80', '192.168.56.102:80', false],
      ['TCP', 'ESTABLISHED', 899, '192.168.56.1:57326', '192.168.56.200:80', '192.168.56.103:80', false],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(path));
  });

  it('reads seed 002`s session capture: three SYN_RECV connections to the NodePort', async () => {
    const path = 'ipvsadm-lnc/seed-002-ipvs-session-syn-recv.txt';
    const result = parseIpvsConn(fixture(path));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map(row)).toEqual([
      ['TCP', 'SYN_RECV', 9, '100.97.130.6:27307', '10.20.79.226:31199', '10.27.1.245:80', false],
      ['TCP', 'SYN_RECV', 59, '10.23.31.87:59462', '10.20.79.226:31199', '10.27.1.246:80', false],
      ['TCP', 'SYN_RECV', 9, '100.97.130.130:26633', '10.20.79.226:31199', '10.27.1.245:80', false],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(path));
  });

  it('follows seed 002`s reused client port from TIME_WAIT to SYN_RECV, reporting the date and conntrack lines', async () => {
    const path = 'conntrack/seed-002-timewait-to-synsent-timeline.txt';
    const result = parseIpvsConn(fixture(path));
    expect(result.problems.map((p) => p.line)).toEqual([1, 3, 4, 6, 7, 9, 10, 12]);
    expectValidRecords(result.records);
    expect(result.records.map(row)).toEqual([
      ['TCP', 'TIME_WAIT', 60, '10.23.31.87:58578', '10.20.79.226:31199', '10.27.1.249:80', false],
      ['TCP', 'TIME_WAIT', 58, '10.23.31.87:58578', '10.20.79.226:31199', '10.27.1.249:80', false],
      ['TCP', 'SYN_RECV', 59, '10.23.31.87:58578', '10.20.79.226:31199', '10.27.1.249:80', false],
      ['TCP', 'SYN_RECV', 58, '10.23.31.87:58578', '10.20.79.226:31199', '10.27.1.249:80', false],
    ]);
    // One identity: the reused port shows as a state change of the same connection.
    expect(new Set(result.records.map(spec.keyOf)).size).toBe(1);
    expect(spec.sameState(result.records[1] as IpvsConnection, result.records[2] as IpvsConnection)).toBe(false);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden('ipvsadm-lnc/seed-002-timewait-to-synsent-timeline.txt'));
  });
});

describe('parseIpvsConn on raw /proc/net/ip_vs_conn (synthetic, see ipvsadm-lnc/README.md)', () => {
  it('decodes hex addresses and ports, full IPv6, templates and persistence-engine data', async () => {
    const path = 'ipvsadm-lnc/synthetic-proc-ip-vs-conn.txt';
    const result = parseIpvsConn(fixture(path));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map(row)).toEqual([
      ['TCP', 'TIME_WAIT', 60, '10.23.31.87:58578', '10.20.79.226:31199', '10.27.1.249:80', false],
      ['TCP', 'SYN_RECV', 59, '10.23.31.87:58578', '10.20.79.226:31199', '10.27.1.249:80', false],
      ['TCP', 'ESTABLISHED', 899, '10.148.20.23:59622', '10.148.201.234:8848', '10.178.104.8:8848', false],
      ['UDP', 'UDP', 299, '10.244.1.5:41234', '10.96.0.10:53', '10.244.2.7:53', false],
      ['TCP', 'NONE', 10799, '10.244.1.5:0', '10.105.253.160:80', '10.244.2.9:8080', true],
      ['IP', 'ASSURED', 359, '10.244.1.5:0', '0.0.0.100:0', '10.244.2.9:0', true],
      ['TCP', 'ESTABLISHED', 899, 'fd00::1:40000', 'fd00::a:443', 'fd00::7041:443', false],
      ['TCP', 'SYN_RECV', 57, '10.0.0.1:1234', '10.96.0.1:80', 'fd00::5:80', false],
      ['UDP', 'UDP', 179, '192.168.1.10:5060', '192.168.1.100:5060', '192.168.1.21:5060', false],
      // The underflowed timer of an expired template reads as 0 seconds left.
      ['TCP', 'NONE', 0, '10.244.1.5:0', '10.105.253.160:80', '10.244.2.9:8080', true],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(path));
  });

  it('gives the same identity to a connection read from /proc and from ipvsadm -Lnc', () => {
    const proc = connectionOf('TCP 0A171F57 E4D2 0A144FE2 79DF 0A1B01F9 0050 TIME_WAIT        60');
    const cli = connectionOf('TCP 01:00  TIME_WAIT   10.23.31.87:58578  10.20.79.226:31199 10.27.1.249:80');
    expect(spec.keyOf(proc)).toBe(spec.keyOf(cli));
    expect({ ...proc, raw: '' }).toEqual({ ...cli, raw: '' });
  });
});

describe('parseIpvsConnLine', () => {
  it.each<[string, string, Partial<IpvsConnection>]>([
    [
      'a ClientIP-affinity template (client port 0)',
      'TCP 179:59 NONE        10.244.1.5:0       10.105.253.160:80  10.244.2.9:8080',
      { state: 'NONE', expiresSeconds: 10799, template: true },
    ],
    [
      'unbounded minutes',
      'TCP 13171233:02 NONE        10.105.253.160:0   10.105.253.160:80  10.244.2.9:8080',
      { expiresSeconds: 13171233 * 60 + 2, template: true },
    ],
    [
      'bracketed IPv6',
      'TCP 14:59  ESTABLISHED [fd00::1]:40000    [fd00::a]:443      [fd00::7041]:443',
      { client: { address: 'fd00::1', port: 40000 }, virtual: { address: 'fd00::a', port: 443 }, destination: { address: 'fd00::7041', port: 443 } },
    ],
    [
      '--persistent-conn columns',
      'UDP 02:59  UDP         192.168.1.10:5060  192.168.1.100:5060 192.168.1.21:5060  sip              a84b4c76e66710@pc33.atlanta.com',
      { proto: 'UDP', state: 'UDP', expiresSeconds: 179 },
    ],
    ['an SCTP connection', 'SCTP 00:05  ESTABLISHED 10.0.0.1:36412 10.0.0.2:38412 10.0.0.3:38412', { proto: 'SCTP', expiresSeconds: 5 }],
  ])('reads %s', (_what, line, expected) => {
    const c = connectionOf(line);
    expect(c).toMatchObject({ ...expected, raw: line });
    expect(spec.schema.decode(c, 'record').ok).toBe(true);
  });

  it('skips the --persistent-conn header, whose `pe name` heading has a space', () => {
    const text = [
      'IPVS connection entries',
      'pro expire state       source             virtual            destination        pe name          pe_data',
      'UDP 02:59  UDP         192.168.1.10:5060  192.168.1.100:5060 192.168.1.21:5060  sip              a84b4c76e66710@pc33.atlanta.com',
    ].join('\n');
    const { records, problems } = parseIpvsConn(text);
    expect(problems).toEqual([]);
    expect(records.map(row)).toEqual([['UDP', 'UDP', 179, '192.168.1.10:5060', '192.168.1.100:5060', '192.168.1.21:5060', false]]);
  });

  it.each<[string, string, RegExp]>([
    ['names printed without -n', 'TCP 14:59  ESTABLISHED client.example.com:51234 web.default.svc:http 10.244.1.9:http', /not a numeric address:port: take the output with `ipvsadm -Lnc`/],
    ['a cut line', 'TCP 00:57  SYN_RECV    10.148.20.23:59620 10.148.201.234:8848', /5 fields where ipvsadm -Lnc prints 6/],
    ['an annotation', 'TCP 00:57  SYN_RECV    10.148.20.23:59620 10.148.201.234:8848 10.178.166.153:8848 <-- dead pod', /9 fields where ipvsadm -Lnc prints 6/],
    ['a two-word annotation', 'TCP 00:57  SYN_RECV    10.148.20.23:59620 10.148.201.234:8848 10.178.166.153:8848 <-- dead', /unexpected "<-- dead" after the destination/],
    ['a bad expire', 'TCP 0:5    SYN_RECV    10.148.20.23:59620 10.148.201.234:8848 10.178.166.153:8848', /expire "0:5" is not MM:SS/],
    ['a redacted address', 'TCP 00:57  SYN_RECV    10.x.x.23:59620 10.148.201.234:8848 10.178.166.153:8848', /"10.x.x.23:59620" is not a numeric address:port/],
    ['a cut /proc line', 'TCP 0A171F57 E4D2 0A144FE2 79DF 0A1B01F9 0050', /fields where \/proc\/net\/ip_vs_conn prints 9/],
    ['a lower-case /proc port', 'TCP 0A171F57 e4d2 0A144FE2 79DF 0A1B01F9 0050 TIME_WAIT        60', /client port "e4d2" is not %04X hex/],
    ['a conntrack line', 'ipv4     2 tcp      6 60 TIME_WAIT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199', /not an IPVS connection line/],
  ])('reports %s', (_what, line, reason) => {
    const parsed = parseIpvsConnLine(line);
    expect('error' in parsed ? parsed.error : 'parsed').toMatch(reason);
    expect(parseIpvsConn(`IPVS connection entries\n${line}\n`).problems.map((p) => [p.line, p.text])).toEqual([[2, line]]);
  });
});
