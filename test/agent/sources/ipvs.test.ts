import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseIpvs } from '../../../agent/sources/ipvs.ts';
import type { IpvsDestination, IpvsRecord, IpvsService } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/ipvsadm-ln/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/ipvsadm-ln/${name.replace(/\.txt$/, '')}.golden.json`;

const servicesOf = (records: readonly IpvsRecord[]): IpvsService[] => records.filter((r): r is IpvsService => r.kind === 'service');
const destinationsOf = (records: readonly IpvsRecord[]): IpvsDestination[] =>
  records.filter((r): r is IpvsDestination => r.kind === 'destination');
const svc = (s: IpvsService) => [s.proto, s.address, s.port, s.scheduler];
const dest = (d: IpvsDestination) => [d.service, d.address, d.port, d.forward, d.weight, d.activeConn, d.inactConn];

function expectValidRecords(records: readonly IpvsRecord[]): void {
  for (const r of records) expect(sources.ipvs.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}

const TITLE = 'Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n';

describe('parseIpvs on verbatim outputs', () => {
  it('reads a single-service listing (no version line) with a weight-0 terminating pod', async () => {
    const name = 'k8s-81775-weight0-terminating-inactconn.txt';
    const result = parseIpvs(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(servicesOf(result.records).map(svc)).toEqual([['TCP', '172.16.255.241', 80, 'rr']]);
    expect(destinationsOf(result.records).map(dest)).toEqual([
      ['TCP 172.16.255.241:80', '172.16.8.106', 80, 'Masq', 0, 10, 14048],
      ['TCP 172.16.255.241:80', '172.16.8.107', 80, 'Masq', 1, 0, 243],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads bracketed IPv6 services and destinations, splitting at the last `]:`', async () => {
    const name = 'k8s-87604-ipv6-only-cluster.txt';
    const result = parseIpvs(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(servicesOf(result.records).map(svc)).toEqual([
      ['TCP', 'fd20::1', 443, 'rr'],
      ['TCP', 'fd20::a', 53, 'rr'],
      ['TCP', 'fd20::a', 9153, 'rr'],
    ]);
    expect(destinationsOf(result.records).map(dest)).toEqual([
      ['TCP fd20::1:443', '2001:db8:0:f101::2', 6443, 'Masq', 1, 5, 0],
      ['TCP fd20::a:53', 'fd20::7041', 53, 'Masq', 1, 0, 0],
      ['TCP fd20::a:53', 'fd20::7042', 53, 'Masq', 1, 0, 0],
      ['TCP fd20::a:9153', 'fd20::7041', 9153, 'Masq', 1, 0, 0],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('flags every line of a listing taken without -n instead of guessing at truncated names', async () => {
    const name = 'kube-router-415-no-numeric-name-truncation.txt';
    const text = fixture(name);
    const result = parseIpvs(text);
    expectValidRecords(result.records);
    const services = servicesOf(result.records);
    const destinations = destinationsOf(result.records);
    expect(services).toHaveLength(8);
    expect(destinations).toHaveLength(14);
    // The port was swallowed by the 33-byte cut: no service has an address or port.
    for (const s of services) expect([s.address, s.port, s.scheduler]).toEqual([null, null, 'rr']);
    const lines = text.split('\n');
    const serviceLines = lines.flatMap((l, i) => (l.startsWith('TCP ') ? [i + 1] : []));
    expect(serviceLines).toHaveLength(8);
    const flagged = result.problems.map((p) => p.line);
    for (const n of serviceLines) expect(flagged).toContain(n);
    for (const p of result.problems) expect(p.reason).toMatch(/ipvsadm -Ln/);
    // Named ports (http, bacula-fd) and the truncated destination name are flagged too;
    // only the four numeric destinations are not.
    expect(result.problems).toHaveLength(8 + 10);
    expect(destinations.filter((d) => d.port !== null).map((d) => `${d.address}:${d.port}`)).toEqual([
      '100.96.5.4:9090',
      '100.96.6.18:9109',
      '100.99.43.2:9125',
      '100.99.70.6:9125',
    ]);
    expect(destinations.filter((d) => d.address === null).map((d) => d.raw.trim())).toEqual(['-> ip-10-0-62-92.ec2.internal:9 Masq    1      0          0']);
    expect(destinations.filter((d) => d.raw.includes(':http')).map((d) => [d.address, d.port])).toEqual([
      ['100.98.125.10', null],
      ['100.99.0.16', null],
      ['100.96.6.22', null],
      ['100.97.16.8', null],
      ['100.97.142.16', null],
      ['100.98.180.22', null],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads seed 002`s `egrep -A 5` excerpt and reports grep`s `--` separator', async () => {
    const name = 'seed-002-egrep-A5.txt';
    const result = parseIpvs(fixture(name));
    expect(result.problems).toEqual([{ line: 7, text: '--', reason: 'grep group separator (`--`), not ipvsadm output' }]);
    expectValidRecords(result.records);
    expect(servicesOf(result.records).map(svc)).toEqual([
      ['TCP', '10.20.81.251', 80, 'rr'],
      ['TCP', '10.20.81.252', 80, 'rr'],
      ['TCP', '10.27.255.42', 80, 'rr'],
      ['TCP', '10.27.255.42', 50091, 'rr'],
    ]);
    expect(destinationsOf(result.records).map((d) => `${d.service} -> ${d.address}:${d.port} w${d.weight}`)).toEqual([
      'TCP 10.20.81.251:80 -> 10.27.1.248:80 w1',
      'TCP 10.20.81.251:80 -> 10.27.1.249:80 w1',
      'TCP 10.20.81.252:80 -> 10.27.1.114:8080 w1',
      'TCP 10.20.81.252:80 -> 10.27.4.110:8080 w1',
      'TCP 10.27.255.42:80 -> 10.27.1.248:80 w1',
      'TCP 10.27.255.42:80 -> 10.27.1.249:80 w1',
      'TCP 10.27.255.42:50091 -> 10.27.1.248:50091 w1',
      'TCP 10.27.255.42:50091 -> 10.27.1.249:50091 w1',
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseIpvs on --stats and --rate listings', () => {
  it('reads a kube-router --stats listing: counters in place of scheduler, forward method and weight', async () => {
    const name = 'kube-router-160-stats-session-affinity.txt';
    const result = parseIpvs(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(servicesOf(result.records).map((s) => [s.address, s.port, s.scheduler, s.stats?.conns])).toEqual([
      ['10.3.0.1', 443, null, 0], ['10.3.0.10', 53, null, 0], ['10.3.0.42', 80, null, 14209],
    ]);
    expect(servicesOf(result.records)[2]?.stats).toEqual({ conns: 14209, inPkts: 111769, outPkts: 74613, inBytes: 7207174, outBytes: 8334358 });
    const web = destinationsOf(result.records).filter((d) => d.service === 'TCP 10.3.0.42:80');
    expect(web).toHaveLength(8);
    expect(web.map((d) => d.stats?.conns)).toEqual([2, 2, 2, 3, 3, 3, 3, 3]);
    expect(web.every((d) => d.forward === null && d.weight === null && d.activeConn === null && d.rate === null)).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads K and M counters as their lower bounds in a --stats listing pasted without padding', async () => {
    const name = 'reibang-lvs-dr-stats-km-suffix.txt';
    const result = parseIpvs(fixture(name));
    expect(result.problems).toEqual([{ line: 1, text: '[root@my-LVS01 ~]# ipvsadm -Ln --stats', reason: 'not an ipvsadm -Ln line' }]);
    expectValidRecords(result.records);
    expect(servicesOf(result.records).map((s) => s.stats)).toEqual([
      { conns: 113786, inPkts: 19495479, outPkts: 0, inBytes: 2_110_000_000, outBytes: 0 },
    ]);
    expect(destinationsOf(result.records).map((d) => [d.address, d.stats?.conns, d.stats?.inBytes])).toEqual([
      ['10.100.5.86', 12883, 181_747_000], ['10.100.5.87', 40269, 1_105_000_000], ['10.100.5.88', 40240, 804_275_000],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads a --rate listing', async () => {
    const name = 'reibang-lvs-dr-rate.txt';
    const result = parseIpvs(fixture(name));
    expect(result.problems.map((p) => p.line)).toEqual([1]);
    expectValidRecords(result.records);
    expect(servicesOf(result.records).map((s) => [s.address, s.port, s.rate, s.stats])).toEqual([
      ['10.100.5.98', 6030, { cps: 0, inPPS: 2, outPPS: 0, inBPS: 193, outBPS: 0 }, null],
    ]);
    expect(destinationsOf(result.records).map((d) => [d.service, d.address, d.rate?.inPPS, d.rate?.inBPS])).toEqual([
      ['TCP 10.100.5.98:6030', '10.100.5.86', 0, 54], ['TCP 10.100.5.98:6030', '10.100.5.87', 1, 65], ['TCP 10.100.5.98:6030', '10.100.5.88', 1, 73],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  const STATS = 'Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n';
  // print_largenum(): `%9llu` below 1e8, then /1e3 K, /1e6 M, /1e9 G, /1e12 T.
  it.each([
    ['99999999', 99_999_999],
    ['100000K', 100_000_000],
    ['999999K', 999_999_000],
    ['1000M', 1_000_000_000],
    ['99999M', 99_999_000_000],
    ['100G', 100_000_000_000],
    ['100T', 100_000_000_000_000],
  ])('reads the print_largenum() column %s as %d', (column, value) => {
    const { records, problems } = parseIpvs(`${STATS}TCP  10.0.0.1:80                    ${column}        0        0        0        0\n`);
    expect(problems).toEqual([]);
    expect(servicesOf(records)[0]?.stats?.conns).toBe(value);
  });

  it('reads a --stats firewall-mark service and its destination', () => {
    const { records, problems } = parseIpvs(`${STATS}FWM  100 IPv6                             7       70       70     4200     4200\n  -> [fd00::5]:80                        7       70       70     4200     4200\n`);
    expect(problems).toEqual([]);
    expect(records.map((r) => (r.kind === 'service' ? [r.proto, r.fwmark, r.flags, r.stats?.conns] : [r.service, r.address, r.port, r.stats?.outBytes]))).toEqual([
      ['FWM', 100, ['IPv6'], 7], ['FWM 100', 'fd00::5', 80, 4200],
    ]);
  });
});

describe('parseIpvs service lines', () => {
  it.each<[string, string, Partial<IpvsService>]>([
    ['kube-proxy ClientIP affinity', 'TCP  10.96.0.1:443 rr persistent 10800', { persistentSeconds: 10800, flags: [] }],
    [
      'persistence with a mask, an engine and one-packet scheduling',
      'UDP  10.0.0.1:5060 rr persistent 360 mask 255.255.255.0 pe sip ops',
      { proto: 'UDP', persistentSeconds: 360, flags: ['mask 255.255.255.0', 'pe sip', 'ops'] },
    ],
    ['1.31 scheduler flags', 'TCP  10.0.0.1:80 sh (sh-fallback,sh-port)', { scheduler: 'sh', flags: ['sh-fallback', 'sh-port'] }],
    ['1.31 SCTP with one space', 'SCTP 10.0.0.1:38412 rr', { proto: 'SCTP', address: '10.0.0.1', port: 38412 }],
    ['a firewall-mark service', 'FWM  100 wlc', { proto: 'FWM', fwmark: 100, address: null, port: null, flags: [] }],
    ['an IPv6 firewall-mark service', 'FWM  100 IPv6 mh (mh-port)', { proto: 'FWM', fwmark: 100, scheduler: 'mh', flags: ['IPv6', 'mh-port'] }],
    ['a pasted line with padding stripped', 'TCP 10.96.0.10:53 rr', { address: '10.96.0.10', port: 53 }],
  ])('reads %s', (_what, line, expected) => {
    const { records, problems } = parseIpvs(`${line}\n`);
    expect(problems).toEqual([]);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ kind: 'service', raw: line, ...expected });
  });

  it('attributes destinations of a firewall-mark service to its mark', () => {
    const { records, problems } = parseIpvs(`${TITLE}FWM  7 rr\n  -> 10.0.0.2:0                 Route   1      0          0\n`);
    expect(problems).toEqual([]);
    expect(destinationsOf(records).map(dest)).toEqual([['FWM 7', '10.0.0.2', 0, 'Route', 1, 0, 0]]);
  });
});

describe('parseIpvs destination lines', () => {
  it.each<[string, string, Partial<IpvsDestination>]>([
    ['the trailing padding of `%-10u`', '  -> 10.0.0.2:80                 Masq    1      0          0         ', { address: '10.0.0.2', port: 80 }],
    ['an IPv6 address wider than its column', '  -> [2001:db8:aaaa:bbbb:cccc:dddd:eeee:1]:8080 Masq    1      0          0', { address: '2001:db8:aaaa:bbbb:cccc:dddd:eeee:1', port: 8080 }],
    ['direct routing', '  -> 10.0.0.3:80 Route 5 1 2', { forward: 'Route', weight: 5, activeConn: 1, inactConn: 2 }],
    ['tunnelling', '  -> 10.0.0.3:80 Tunnel 1 0 0', { forward: 'Tunnel' }],
    ['the local node', '  -> 127.0.0.1:80 Local 1 0 0', { forward: 'Local' }],
  ])('reads %s', (_what, line, expected) => {
    const { records, problems } = parseIpvs(`TCP  10.96.0.1:80 rr\n${line}\n`);
    expect(problems).toEqual([]);
    expect(destinationsOf(records)).toHaveLength(1);
    expect(destinationsOf(records)[0]).toMatchObject({ service: 'TCP 10.96.0.1:80', raw: line, ...expected });
  });
});

describe('parseIpvs problems', () => {
  it.each<[string, string, number[], RegExp]>([
    ['a destination with no service above it', '  -> 10.0.0.2:80 Masq 1 0 0', [1], /no readable service line above it/],
    ['an annotated destination', 'TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Masq 1 0 0   <-- old pod', [2], /unexpected "<-- old pod" after InActConn/],
    ['an unknown forward method', 'TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Bridge 1 0 0', [2], /"Bridge" is not a forward method/],
    ['a cut destination', 'TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Masq 1', [2], /cut short/],
    ['an ellipsis, after which destinations have no known service', 'TCP  10.0.0.1:80 rr\n...\n  -> 10.0.0.2:80 Masq 1 0 0', [2, 3], /no readable service line above it/],
    [
      '--stats lines without their title',
      'TCP  10.0.0.1:80                         5       20       10     1200      800\n  -> 10.0.0.2:80                         5       20       10     1200      800',
      [1, 2],
      /numbers where the forward method belongs/,
    ],
    [
      'a default-listing line under a --stats title',
      'Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\nTCP  10.0.0.1:80 rr',
      [3],
      /"rr" where a --stats counter belongs \(Conns InPkts OutPkts InBytes OutBytes\)/,
    ],
    [
      'a --rate line cut short',
      'Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n  -> RemoteAddress:Port\nTCP  10.0.0.1:80                        0        0        0',
      [3],
      /3 counters where --rate prints 5 \(CPS InPPS OutPPS InBPS OutBPS\): a cut line\?/,
    ],
    [
      'a --thresholds listing',
      'Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn\n  -> RemoteAddress:Port\nTCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80                 0          0          0          0',
      [3, 4],
      /--thresholds/,
    ],
    [
      'a --persistent-conn listing',
      'Prot LocalAddress:Port            Weight    PersistConn ActiveConn InActConn\n  -> RemoteAddress:Port\nTCP  10.0.0.1:80 rr persistent 300\n  -> 10.0.0.2:80                 1         0           0          0',
      [3, 4],
      /--persistent-conn/,
    ],
  ])('reports %s', (_what, text, lines, reason) => {
    const { problems } = parseIpvs(`${text}\n`);
    expect(problems.map((p) => p.line)).toEqual(lines);
    expect(problems.at(-1)?.reason).toMatch(reason);
  });

  it('reads the default listing again after an unsupported one', () => {
    const thresholds = 'Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn\n  -> RemoteAddress:Port\nTCP  10.0.0.1:80 rr\n';
    const { records, problems } = parseIpvs(`${thresholds}${TITLE}TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Masq 1 0 0\n`);
    expect(problems.map((p) => p.line)).toEqual([3]);
    expect(records.map((r) => r.kind)).toEqual(['service', 'destination']);
  });

  it('reads a default listing after a --stats one with its own columns', () => {
    const stats = 'Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\nTCP  10.0.0.1:80  1 1 1 1 1\n';
    const { records, problems } = parseIpvs(`${stats}${TITLE}TCP  10.0.0.1:80 rr\n  -> 10.0.0.2:80 Masq 1 0 0\n`);
    expect(problems).toEqual([]);
    expect(records.map((r) => [r.kind, r.stats?.conns ?? null, r.kind === 'service' ? r.scheduler : r.forward])).toEqual([
      ['service', 1, null], ['service', null, 'rr'], ['destination', null, 'Masq'],
    ]);
  });
});
