import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseAddrs } from '../../../agent/sources/addrs.ts';
import type { Address } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/ip-route/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/ip-route/${name.replace(/\.txt$/, '')}.golden.json`;

function expectValidRecords(records: readonly Address[]): void {
  for (const r of records) expect(sources.addrs.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}
const withoutRaw = (records: readonly Address[]) => records.map(({ raw: _raw, ...r }) => r);

describe('parseAddrs on verbatim ip addr output', () => {
  it('reads kube-ipvs0 from k8s#65158: index 3, one /32 with a brd equal to the address', async () => {
    const name = 'k8s-65158-ip-addr-kube-ipvs0-down-with-brd.txt';
    const result = parseAddrs(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records).toEqual([
      {
        ifindex: 3,
        ifname: 'kube-ipvs0',
        family: 'inet',
        address: '10.200.10.10',
        prefixLen: 32,
        broadcast: '10.200.10.10',
        scope: 'global',
        flags: [],
        raw: '    inet 10.200.10.10/32 brd 10.200.10.10 scope global kube-ipvs0',
      },
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseAddrs on a lab node (lab-capture.sh, iproute2 6.1)', () => {
  it('reads `ip addr`: kube-ipvs0 VIPs as /32 without brd, veth names without @peer', async () => {
    const name = 'lab-node-ip-addr.txt';
    const result = parseAddrs(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(records).toHaveLength(9);
    expect(records.filter((a) => a.ifname === 'kube-ipvs0').map((a) => [a.ifindex, a.address, a.prefixLen, a.broadcast, a.scope])).toEqual([
      [5, '10.96.0.10', 32, null, 'global'],
      [5, '203.0.113.50', 32, null, 'global'],
    ]);
    expect(records.find((a) => a.address === '10.0.0.10')).toMatchObject({ ifindex: 2, ifname: 'eth0', prefixLen: 24, broadcast: '10.0.0.255' });
    expect(records.find((a) => a.address === 'fd00:10::10')).toMatchObject({ family: 'inet6', ifname: 'eth0', flags: ['nodad'] });
    expect(new Set(records.map((a) => a.ifname))).toEqual(new Set(['lo', 'eth0', 'eni0a1b2c3d4e2', 'eni0a1b2c3d4e3', 'kube-ipvs0']));
    expect(records.every((a) => a.raw.startsWith('    inet'))).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads `ip -o addr` into the same addresses as `ip addr`', async () => {
    const name = 'lab-node-ip-o-addr.txt';
    const result = parseAddrs(fixture(name));
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(withoutRaw(result.records)).toEqual(withoutRaw(parseAddrs(fixture('lab-node-ip-addr.txt')).records));
    expect(result.records[0]?.raw).toBe('1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever');
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads address flags: secondary, deprecated, dynamic, noprefixroute, nodad, tentative, and a label', async () => {
    const name = 'lab-types-ip-addr.txt';
    const result = parseAddrs(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(records.filter((a) => a.ifname === 'eth0').map((a) => [a.address, a.flags])).toEqual([
      ['10.1.0.10', []],
      ['10.2.0.10', ['noprefixroute']],
      ['10.1.0.11', ['secondary']],
      ['10.1.0.12', ['secondary', 'deprecated', 'dynamic']],
      ['fd00:1::11', ['nodad', 'dynamic']],
      ['fd00:1::10', ['nodad']],
      ['fe80::f095:5eff:fe88:f346', ['tentative']],
    ]);
    // `label eth0:vip` is the last word of the line, not a flag.
    expect(records.find((a) => a.address === '10.1.0.11')?.raw).toBe('    inet 10.1.0.11/24 brd 10.1.0.255 scope global secondary eth0:vip');
    expect(records.find((a) => a.address === 'fd00:244::1')).toMatchObject({ ifindex: 3, ifname: 'cni0', flags: ['tentative'] });
    expect(withoutRaw(parseAddrs(fixture('lab-types-ip-o-addr.txt')).records)).toEqual(withoutRaw(records));
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('yields nothing and reports nothing for `ip link` text', () => {
    expect(parseAddrs(fixture('lab-node-ip-link.txt'))).toEqual({ records: [], problems: [] });
    expect(parseAddrs(fixture('lab-node-ip-o-link.txt'))).toEqual({ records: [], problems: [] });
  });
});

describe('parseAddrs on single lines', () => {
  it.each<[string, string, Partial<Address>]>([
    ['a grepped IPv4 line, named by its label', '    inet 10.0.0.5/24 brd 10.0.0.255 scope global eth0', { ifindex: null, ifname: 'eth0', address: '10.0.0.5' }],
    ['a grepped alias line', '    inet 10.0.0.6/24 scope global secondary eth0:1', { ifindex: null, ifname: 'eth0', flags: ['secondary'] }],
    ['a point-to-point peer', '5: tun0    inet 10.8.0.1 peer 10.8.0.2/32 scope global tun0\\       valid_lft forever preferred_lft forever', { ifindex: 5, address: '10.8.0.1', prefixLen: 32 }],
    ['unknown flag bits and a metric', '2: eth0    inet6 2001:db8::5/64 metric 100 scope global flags 800 \\       valid_lft 86393sec preferred_lft 14393sec', { family: 'inet6', flags: ['flags 800'] }],
    ['an old kube-proxy brd on kube-ipvs0', '3: kube-ipvs0    inet 10.96.0.1/32 brd 10.96.0.1 scope global kube-ipvs0\\       valid_lft forever preferred_lft forever', { broadcast: '10.96.0.1', prefixLen: 32 }],
    ['an uncompressed IPv6 address', '2: eth0    inet6 FE80:0000:0000:0000:0000:0000:0000:0001/64 scope link \\       valid_lft forever preferred_lft forever', { address: 'fe80::1' }],
    ['kube-router dummy interface with scope link', '4: kube-dummy-if    inet 10.96.0.10/32 scope link kube-dummy-if\\       valid_lft forever preferred_lft forever', { ifname: 'kube-dummy-if', scope: 'link' }],
  ])('reads %s', (_what, line, expected) => {
    const { records, problems } = parseAddrs(line);
    expect(problems).toEqual([]);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ ...expected, raw: line });
  });

  it.each<[string, string]>([
    ['    inet6 fe80::1/64 scope link ', 'inet6 address without an interface header above it (IPv6 addresses carry no label)'],
    ['    inet 10.0.0.5/24 brd 10.0.0.255 scope', '`scope` without a value (a cut line?)'],
    ['    inet 10.x.x.x/24 scope global eth0', '"10.x.x.x/24" is not an IP address'],
    ['    inet 10.0.0.5 scope global eth0', '"10.0.0.5" has no prefix length (a cut line?)'],
    ['    inet 10.0.0.5/40 scope global eth0', 'prefix length of "10.0.0.5/40" is not a number in range'],
    ['    inet', '`inet` without an address (a cut line?)'],
    ['$ ip addr show kube-ipvs0', 'not a line of ip addr (expected `N: IF: <FLAGS> …`, `link/…`, `inet …`, `inet6 …` or `valid_lft …`)'],
  ])('reports %j as a problem with its line number', (line, reason) => {
    const { records, problems } = parseAddrs(`    inet 127.0.0.1/8 scope host lo\n${line}\n`);
    expect(records).toHaveLength(1);
    expect(problems).toEqual([{ line: 2, text: line, reason }]);
  });

  it('keeps an annotated address and reports the annotation', () => {
    const text = '5: kube-ipvs0: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default\n    inet 10.96.0.10/32 scope global kube-ipvs0 <-- kube-dns\n';
    const { records, problems } = parseAddrs(text);
    expect(records.map((a) => [a.ifindex, a.ifname, a.address])).toEqual([[5, 'kube-ipvs0', '10.96.0.10']]);
    expect(problems).toEqual([
      { line: 2, text: '    inet 10.96.0.10/32 scope global kube-ipvs0 <-- kube-dns', reason: 'text that ip addr does not print, ignored: "<-- kube-dns"' },
    ]);
  });

  it('never throws on arbitrary text', () => {
    const junk = ['\\', '    inet ', '1: x    inet6', '2: eth0@: <> mtu', '    inet 1.2.3.4/ peer', '    inet6 ::/0 peer ::/', '\u0000', 'x'.repeat(10_000)];
    for (const text of junk) expect(() => parseAddrs(text)).not.toThrow();
    expect(parseAddrs(junk.join('\n')).records).toEqual([]);
  });
});
