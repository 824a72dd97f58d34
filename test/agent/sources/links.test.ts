import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseLinks } from '../../../agent/sources/links.ts';
import type { Link } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/ip-route/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string, suffix = ''): string => `../../fixtures/ip-route/${name.replace(/\.txt$/, '')}${suffix}.golden.json`;

function expectValidRecords(records: readonly Link[]): void {
  for (const r of records) expect(sources.links.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}
const withoutRaw = (records: readonly Link[]) => records.map(({ raw: _raw, ...r }) => r);

describe('parseLinks on verbatim ip addr output', () => {
  it('reads kube-ipvs0 from k8s#65158: index 3, <BROADCAST,NOARP>, qdisc noop, DOWN; its address lines are not problems', async () => {
    const name = 'k8s-65158-ip-addr-kube-ipvs0-down-with-brd.txt';
    const result = parseLinks(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records).toEqual([
      {
        ifindex: 3,
        ifname: 'kube-ipvs0',
        flags: ['BROADCAST', 'NOARP'],
        mtu: 1500,
        qdisc: 'noop',
        operState: 'DOWN',
        linkType: 'ether',
        mac: 'da:08:05:49:16:56',
        raw: '3: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default\n    link/ether da:08:05:49:16:56 brd ff:ff:ff:ff:ff:ff',
      },
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name, '.links'));
  });
});

describe('parseLinks on a lab node (lab-capture.sh, iproute2 6.1)', () => {
  it('reads `ip link`: veth names without @peer, the kube-ipvs0 stand-in DOWN with NOARP', async () => {
    const name = 'lab-node-ip-link.txt';
    const result = parseLinks(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(records.map((l) => [l.ifindex, l.ifname, l.operState, l.linkType])).toEqual([
      [1, 'lo', 'UNKNOWN', 'loopback'],
      [2, 'eth0', 'UP', 'ether'],
      [3, 'eni0a1b2c3d4e2', 'UP', 'ether'],
      [4, 'eni0a1b2c3d4e3', 'UP', 'ether'],
      [5, 'kube-ipvs0', 'DOWN', 'ether'],
    ]);
    expect(records[4]).toMatchObject({ flags: ['BROADCAST', 'MULTICAST', 'NOARP'], qdisc: 'noop', mtu: 1500, mac: '02:21:a0:12:6b:c1' });
    expect(records[1]?.raw.split('\n')).toEqual([
      '2: eth0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT group default qlen 1000',
      '    link/ether 8e:2e:5b:1c:18:f3 brd ff:ff:ff:ff:ff:ff link-netns ctX-iproute-6715-gw',
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads `ip -o link` into the same links as `ip link`', async () => {
    const name = 'lab-node-ip-o-link.txt';
    const result = parseLinks(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(withoutRaw(result.records)).toEqual(withoutRaw(parseLinks(fixture('lab-node-ip-link.txt')).records));
    expect(result.records.every((l) => !l.raw.includes('\n') && l.raw.includes('\\    link/'))).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads the links of `ip addr` text and skips its address lines silently', () => {
    const result = parseLinks(fixture('lab-node-ip-addr.txt'));
    expect(result.problems).toEqual([]);
    // ip addr prints no `mode DEFAULT`; everything the record keeps is the same.
    expect(withoutRaw(result.records)).toEqual(withoutRaw(parseLinks(fixture('lab-node-ip-link.txt')).records));
    expect(parseLinks(fixture('lab-node-ip-o-addr.txt'))).toEqual({ records: [], problems: [] });
  });

  it('reads a bridge port (master cni0, LOWERLAYERDOWN) and a carrier-less bridge', async () => {
    const name = 'lab-types-ip-link.txt';
    const result = parseLinks(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map((l) => [l.ifname, l.flags.join(','), l.operState])).toEqual([
      ['lo', 'LOOPBACK,UP,LOWER_UP', 'UNKNOWN'],
      ['eth0', 'BROADCAST,MULTICAST,UP,LOWER_UP', 'UP'],
      ['cni0', 'NO-CARRIER,BROADCAST,MULTICAST,UP', 'DOWN'],
      ['vethpeer', 'BROADCAST,MULTICAST', 'DOWN'],
      ['vethport', 'NO-CARRIER,BROADCAST,MULTICAST,UP,M-DOWN', 'LOWERLAYERDOWN'],
    ]);
    expect(withoutRaw(parseLinks(fixture('lab-types-ip-o-link.txt')).records)).toEqual(withoutRaw(result.records));
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseLinks on single lines', () => {
  it.each<[string, string, Partial<Link>]>([
    ['a header pasted without its link/ line', '7: cali1234@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1440 qdisc noqueue state UP mode DEFAULT group default', { ifname: 'cali1234', mtu: 1440, linkType: null, mac: null }],
    ['a peer unknown to ip', '8: vxlan0@NONE: <BROADCAST,MULTICAST> mtu 1450 qdisc noop state DOWN mode DEFAULT group default qlen 1000', { ifname: 'vxlan0', operState: 'DOWN' }],
    ['a tun device without an address', '9: tun0: <POINTOPOINT,MULTICAST,NOARP,UP,LOWER_UP> mtu 1500 qdisc fq_codel state UNKNOWN mode DEFAULT group default qlen 500\\    link/none ', { linkType: 'none', mac: null }],
    ['an xdp program and old header order', '2: eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdpgeneric/id:42 qdisc mq master bond0 state UP qlen 1000\\    link/ether 0a:1b:2c:3d:4e:5f brd ff:ff:ff:ff:ff:ff', { qdisc: 'mq', mac: '0a:1b:2c:3d:4e:5f' }],
    ['an empty flag list', '10: sit0@NONE: <NOARP> mtu 1480 qdisc noop state DOWN mode DEFAULT group default qlen 1000\\    link/sit 0.0.0.0 brd 0.0.0.0', { flags: ['NOARP'], linkType: 'sit', mac: '0.0.0.0' }],
  ])('reads %s', (_what, line, expected) => {
    const { records, problems } = parseLinks(line);
    expect(problems).toEqual([]);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ ...expected, raw: line });
  });

  it('skips altname lines of ip link', () => {
    const text = '2: ens5: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 9001 qdisc mq state UP mode DEFAULT group default qlen 1000\n    link/ether 02:aa:bb:cc:dd:ee brd ff:ff:ff:ff:ff:ff\n    altname enp0s5\n';
    const { records, problems } = parseLinks(text);
    expect(problems).toEqual([]);
    expect(records.map((l) => [l.ifname, l.mac, l.mtu])).toEqual([['ens5', '02:aa:bb:cc:dd:ee', 9001]]);
  });

  it.each<[string, string]>([
    ['3: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state', '`state` without a value (a cut line?)'],
    ['    link/ether da:08:05:49:16:56 brd ff:ff:ff:ff:ff:ff', 'link/ line without an interface header above it'],
    ['3: kube-ipvs0: <BROADCAST,NO', 'not a line of ip link or ip addr (expected `N: IF: <FLAGS> …` or `link/…`)'],
    ['    RX: bytes  packets  errors  dropped missed  mcast', 'not a line of ip link or ip addr (expected `N: IF: <FLAGS> …` or `link/…`)'],
  ])('reports %j as a problem with its line number', (line, reason) => {
    const { records, problems } = parseLinks(`1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\n\n${line}\n`);
    expect(records.map((l) => l.ifname)).toEqual(['lo']);
    expect(problems).toEqual([{ line: 3, text: line, reason }]);
  });

  it('keeps an annotated link and reports the annotation', () => {
    const line = '3: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default <-- IPVS dummy';
    const { records, problems } = parseLinks(line);
    expect(records.map((l) => [l.ifname, l.operState])).toEqual([['kube-ipvs0', 'DOWN']]);
    expect(problems).toEqual([{ line: 1, text: line, reason: 'text that ip link does not print, ignored: "<-- IPVS dummy"' }]);
  });

  it('never throws on arbitrary text', () => {
    const junk = ['\\', '1:', '1: x: <', '1: x: <> \\', '    link/', 'link/ether', '2: a@: <UP> mtu', '\u0000', 'y'.repeat(10_000)];
    for (const text of junk) expect(() => parseLinks(text)).not.toThrow();
  });
});
