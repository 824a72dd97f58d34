import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseRoutes } from '../../../agent/sources/routes.ts';
import type { Route } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/ip-route/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/ip-route/${name.replace(/\.txt$/, '')}.golden.json`;

function expectValidRecords(records: readonly Route[]): void {
  for (const r of records) expect(sources.routes.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}

/** The fields a reader compares, without raw. */
const brief = (r: Route) => ({ type: r.type, dst: r.dst, via: r.via, dev: r.dev, table: r.table });

/** Parses one route line and returns its record (the test fails if it is not exactly one, without problems). */
function routeOf(line: string, defaults?: Parameters<typeof parseRoutes>[1]): Route {
  const { records, problems } = parseRoutes(line, defaults);
  expect(problems).toEqual([]);
  expect(records).toHaveLength(1);
  return records[0] as Route;
}

describe('parseRoutes on verbatim ip route output', () => {
  it('reads the EKS main table: 12 routes, eni host routes, and an annotated pod route kept with a problem', async () => {
    const name = 'eks-2018-reinvent-ip-route-main-eni-host-routes.txt';
    const result = parseRoutes(fixture(name));
    const { records, problems } = result;
    expectValidRecords(records);
    expect(records).toHaveLength(12);
    expect(records.every((r) => r.family === 'inet' && r.table === 'main' && r.type === 'unicast')).toBe(true);
    expect(records[0]).toMatchObject({ dst: 'default', via: '192.168.0.1', dev: 'eth0', scope: null, flags: [] });
    expect(records[1]).toMatchObject({ dst: '169.254.169.254', via: null, dev: 'eth0' });
    expect(records[2]).toMatchObject({ dst: '172.17.0.0/16', dev: 'docker0', proto: 'kernel', scope: 'link', src: '172.17.0.1', flags: ['linkdown'] });
    expect(records[3]).toMatchObject({ dst: '192.168.0.0/19', dev: 'eth0', src: '192.168.4.93' });
    const pods = records.filter((r) => r.dev?.startsWith('eni'));
    expect(pods).toHaveLength(8);
    expect(pods.every((r) => r.scope === 'link' && r.via === null && !r.dst.includes('/'))).toBe(true);
    expect(pods.map((r) => r.dst)).toContain('192.168.7.62');
    const annotated = records.find((r) => r.dst === '192.168.7.62');
    expect(annotated).toMatchObject({ dev: 'eni6a241e7f902', scope: 'link', flags: [] });
    expect(annotated?.raw).toBe('192.168.7.62 dev eni6a241e7f902 scope link <-- worker-hello-5d9b798f74-72q5t');
    expect(problems).toEqual([
      {
        line: 7,
        text: '192.168.7.62 dev eni6a241e7f902 scope link <-- worker-hello-5d9b798f74-72q5t',
        reason: 'text that ip route does not print, ignored: "<-- worker-hello-5d9b798f74-72q5t"',
      },
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads the per-ENI table 2 in the table the caller names, keeping the annotated default route', async () => {
    const name = 'eks-2018-reinvent-ip-route-table-2-secondary-eni.txt';
    const result = parseRoutes(fixture(name), { table: '2' });
    expectValidRecords(result.records);
    expect(result.records.map(brief)).toEqual([
      { type: 'unicast', dst: 'default', via: '192.168.128.1', dev: 'eth1', table: '2' },
      { type: 'unicast', dst: '192.168.128.1', via: null, dev: 'eth1', table: '2' },
    ]);
    expect(result.records[1]?.scope).toBe('link');
    expect(result.problems).toEqual([
      {
        line: 1,
        text: 'default via 192.168.128.1 dev eth1 <-- outgoing eth1',
        reason: 'text that ip route does not print, ignored: "<-- outgoing eth1"',
      },
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseRoutes on a lab node (lab-capture.sh, iproute2 6.1)', () => {
  it('finds kube-ipvs0 ClusterIP and LB IP in table local, as on an IPVS node', async () => {
    const name = 'lab-node-ip-route-show-table-all.txt';
    const result = parseRoutes(fixture(name), { family: 'inet' });
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(records).toHaveLength(25);
    const vips = records.filter((r) => r.dev === 'kube-ipvs0');
    expect(vips.map(({ raw: _raw, ...r }) => r)).toEqual([
      { family: 'inet', table: 'local', type: 'local', dst: '10.96.0.10', via: null, dev: 'kube-ipvs0', proto: 'kernel', scope: 'host', src: '10.96.0.10', metric: null, flags: [] },
      { family: 'inet', table: 'local', type: 'local', dst: '203.0.113.50', via: null, dev: 'kube-ipvs0', proto: 'kernel', scope: 'host', src: '203.0.113.50', metric: null, flags: [] },
    ]);
    // print_route() writes every token as "%s ", so the IPv4 lines end with a space.
    expect(vips[1]?.raw).toBe('local 203.0.113.50 dev kube-ipvs0 table local proto kernel scope host src 203.0.113.50 ');
    expect(records.find((r) => r.type === 'blackhole')).toMatchObject({ dst: '10.244.1.0/24', dev: null, table: 'main' });
    // `ip route add 10.244.1.2/32` is printed back without /32.
    expect(records.filter((r) => r.dev?.startsWith('eni0a1b2c3d4e') && r.family === 'inet').map((r) => r.dst)).toEqual(['10.244.1.2', '10.244.1.3']);
    expect(records.filter((r) => r.table === '2').map(brief)).toEqual([
      { type: 'unicast', dst: 'default', via: '10.0.0.1', dev: 'eth0', table: '2' },
      { type: 'unicast', dst: '10.0.0.1', via: null, dev: 'eth0', table: '2' },
    ]);
    expect(records.find((r) => r.type === 'broadcast' && r.dev === 'eth0')).toMatchObject({ dst: '10.0.0.255', table: 'local', scope: 'link' });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads the IPv6 routes that `ip route show table all` also prints as IPv6, whatever family the caller gave', () => {
    const { records } = parseRoutes(fixture('lab-node-ip-route-show-table-all.txt'), { family: 'inet' });
    const v6 = records.filter((r) => r.family === 'inet6');
    expect(v6).toHaveLength(11);
    expect(v6.find((r) => r.dst === 'default')).toMatchObject({ via: 'fd00:10::1', dev: 'eth0', metric: 1024 });
    expect(v6.every((r) => r.dst.includes(':') || r.dst === 'default')).toBe(true);
    // The same routes, record for record, as `ip -6 route show table all` prints them.
    const only6 = parseRoutes(fixture('lab-node-ip-6-route-show-table-all.txt'), { family: 'inet6' }).records;
    expect(v6).toEqual(only6);
    const types = parseRoutes(fixture('lab-types-ip-route-show-table-all.txt')).records.filter((r) => r.family === 'inet6');
    expect(types).toEqual(parseRoutes(fixture('lab-types-ip-6-route-show-table-all.txt'), { family: 'inet6' }).records);
  });

  it('reads `ip -6 route show table all`: IPv6 metrics, local and multicast entries, no trailing space', async () => {
    const name = 'lab-node-ip-6-route-show-table-all.txt';
    const result = parseRoutes(fixture(name), { family: 'inet6' });
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records).toHaveLength(11);
    expect(result.records.every((r) => r.family === 'inet6')).toBe(true);
    expect(result.records.filter((r) => r.type === 'multicast').map((r) => [r.dst, r.dev, r.table])).toEqual([
      ['ff00::/8', 'eth0', 'local'],
      ['ff00::/8', 'eni0a1b2c3d4e2', 'local'],
      ['ff00::/8', 'eni0a1b2c3d4e3', 'local'],
    ]);
    expect(result.records.find((r) => r.dst === 'fd00:10::10')).toMatchObject({ type: 'local', table: 'local', metric: 0, proto: 'kernel' });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads every route type and attaches multipath nexthop lines to their route', async () => {
    const name = 'lab-types-ip-route-show-table-all.txt';
    const text = fixture(name);
    const result = parseRoutes(text);
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    // 36 lines, of which 4 are nexthop continuations.
    expect(records).toHaveLength(32);
    const lines = text.split('\n');
    const ecmp4 = records.find((r) => r.dst === '10.250.0.0/16');
    expect(ecmp4).toMatchObject({ type: 'unicast', via: '10.1.0.1', dev: 'eth0', table: 'main' });
    expect(ecmp4?.raw).toBe(lines.slice(4, 7).join('\n'));
    expect(ecmp4?.raw.split('\n')[2]).toBe('\tnexthop via 10.1.0.2 dev eth0 weight 2 ');
    expect(records.find((r) => r.dst === 'fd00:250::/48')).toMatchObject({ family: 'inet6', via: 'fd00:1::1', dev: 'eth0', metric: 1024 });
    expect(records.map((r) => r.type).filter((t) => t !== 'unicast' && t !== 'local' && t !== 'broadcast')).toEqual([
      'throw', 'unreachable', 'prohibit', 'anycast', 'blackhole', 'unreachable', 'multicast', 'multicast',
    ]);
    expect(records[0]).toMatchObject({ type: 'throw', dst: '10.253.0.0/16', table: '100', dev: null });
    expect(records[1]).toMatchObject({ dst: '192.0.2.0/24', via: '10.1.0.1', table: '100', proto: '66', src: '10.1.0.10' });
    expect(records.find((r) => r.dst === '10.254.0.0/16')?.flags).toEqual(['onlink']);
    expect(records.find((r) => r.dst === '10.255.0.0/16')).toMatchObject({ proto: 'static', metric: 100, flags: [] });
    expect(records.filter((r) => r.flags.includes('linkdown')).map((r) => r.dst)).toEqual([
      '10.244.0.0/24', '10.244.0.255', 'fd00:244::/64', 'ff00::/8',
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseRoutes on single lines', () => {
  it.each<[string, string, Partial<Route>]>([
    ['pre-4.8 double spaces', '10.0.0.0/24 dev eth0  proto kernel  scope link  src 10.0.0.5 ', { dst: '10.0.0.0/24', dev: 'eth0', proto: 'kernel', scope: 'link', src: '10.0.0.5' }],
    ['stripped trailing space', 'default via 10.0.0.1 dev eth0 proto dhcp metric 100', { dst: 'default', via: '10.0.0.1', proto: 'dhcp', metric: 100 }],
    ['uncompressed IPv6 made canonical', '2001:0db8:0000:0000:0000:0000:0000:0001 dev eth0 metric 256', { family: 'inet6', dst: '2001:db8::1' }],
    ['IPv6 prefix made canonical, /len kept', 'FD00:0:0:0::/64 dev eth0 proto kernel metric 256 pref medium', { family: 'inet6', dst: 'fd00::/64', metric: 256 }],
    ['IPv4 route via an IPv6 gateway (RFC 5549)', 'default via inet6 fe80::1 dev eth0 proto bird', { family: 'inet', via: 'fe80::1', proto: 'bird' }],
    ['metrics with lock, expires, error, nhid', 'fd00::/64 nhid 12 dev eth0 metric 1024 expires 299sec mtu lock 1400 hoplimit 64 error -113 pref high', { family: 'inet6', dev: 'eth0', metric: 1024 }],
    ['all the flags', '10.1.0.0/16 via 10.0.0.1 dev eth0 dead onlink pervasive offload trap notify linkdown rt_offload_failed', { flags: ['dead', 'onlink', 'pervasive', 'offload', 'trap', 'notify', 'linkdown', 'rt_offload_failed'] }],
    ['a source-specific IPv6 route', 'default from 2001:db8::/64 via fe80::1 dev eth0 metric 1024 pref medium', { family: 'inet6', via: 'fe80::1', dst: 'default' }],
    ['the unicast type printed by ip -d', 'unicast 10.2.0.0/16 dev eth0 proto boot scope global', { type: 'unicast', proto: 'boot', scope: 'global' }],
    ['an lwtunnel encap', '10.3.0.0/16 encap mpls 100/200 via 10.0.0.1 dev eth0', { via: '10.0.0.1', dev: 'eth0' }],
    ['`ip -o route` multipath on one line', '10.250.0.0/16 proto static \\\tnexthop via 10.1.0.1 dev eth0 weight 1 \\\tnexthop via 10.1.0.2 dev eth1 weight 1 dead', { via: '10.1.0.1', dev: 'eth0', proto: 'static', flags: ['dead'] }],
  ])('reads a route with %s', (_what, line, expected) => {
    const route = routeOf(line);
    expect(route).toMatchObject(expected);
    expect(route.raw).toBe(line);
  });

  it('takes the family of a `default` route without addresses from the caller', () => {
    expect(routeOf('default dev wg0 scope link', { family: 'inet6' }).family).toBe('inet6');
    expect(routeOf('unreachable default dev lo metric 4294967295 error -101 pref medium').family).toBe('inet');
    expect(routeOf('unreachable default dev lo metric 4294967295 error -101 pref medium', { family: 'inet6' })).toMatchObject({
      family: 'inet6', type: 'unreachable', metric: 4294967295,
    });
  });

  it('keeps `table X` when printed and uses the default table otherwise', () => {
    expect(routeOf('local 10.96.0.10 dev kube-ipvs0 table local proto kernel scope host src 10.96.0.10 ').table).toBe('local');
    expect(routeOf('10.96.0.10 dev kube-ipvs0 proto kernel scope host src 10.96.0.10').table).toBe('main');
    expect(routeOf('local 10.96.0.10 dev kube-ipvs0 proto kernel scope host src 10.96.0.10', { table: 'local' }).table).toBe('local');
  });

  it('attaches a nexthop flag to the route and does not report nexthop lines', () => {
    const text = '10.250.0.0/16 proto static \n\tnexthop via 10.1.0.1 dev eth0 weight 1 \n\tnexthop via 10.1.0.2 dev eth1 weight 1 linkdown\n10.9.0.0/16 dev eth1 ';
    const { records, problems } = parseRoutes(text);
    expect(problems).toEqual([]);
    expect(records.map((r) => [r.dst, r.via, r.dev, r.flags])).toEqual([
      ['10.250.0.0/16', '10.1.0.1', 'eth0', ['linkdown']],
      ['10.9.0.0/16', null, 'eth1', []],
    ]);
    expect(records[0]?.raw).toBe('10.250.0.0/16 proto static \n\tnexthop via 10.1.0.1 dev eth0 weight 1 \n\tnexthop via 10.1.0.2 dev eth1 weight 1 linkdown');
  });

  it.each<[string, string]>([
    ['192.168.7.62 dev', '`dev` without a value (a cut line?)'],
    ['10.x.x.x/16 dev eth0', 'destination "10.x.x.x/16" is not default, an address or a prefix'],
    ['10.0.0.0/33 dev eth0', 'destination "10.0.0.0/33" is not default, an address or a prefix'],
    ['default via 10.0.0.XXX dev eth0', 'gateway "10.0.0.XXX" is not an IP address'],
    ['10.0.0.0/24 dev eth0 src web1', 'source "web1" is not an IP address'],
    ['10.0.0.0/24 dev eth0 metric high', 'metric "high" is not a number'],
    ['blackhole', '`blackhole` without a destination (a cut line?)'],
    ['\tnexthop via 10.1.0.1 dev eth0 weight 1', '`nexthop` continuation line without a route above it'],
    ['...', 'destination "..." is not default, an address or a prefix'],
    ['$ ip route show table all', 'destination "$" is not default, an address or a prefix'],
  ])('reports %j as a problem with its line number and yields no route', (line, reason) => {
    const { records, problems } = parseRoutes(`default via 10.0.0.1 dev eth0\n\n${line}\n`);
    expect(records).toHaveLength(1);
    expect(problems).toEqual([{ line: 3, text: line, reason }]);
  });

  it.each<[string, string]>([
    ['10.0.0.0/24 dev eth0 scope link # pod CIDR', '# pod CIDR'],
    ['10.0.0.0/24 dev eth0 scope link worker-1', 'worker-1'],
    ['10.0.0.0/24 dev eth0 ...', '...'],
  ])('keeps the route of %j and reports the text ip does not print', (line, tail) => {
    const { records, problems } = parseRoutes(line);
    expect(records.map((r) => [r.dst, r.dev])).toEqual([['10.0.0.0/24', 'eth0']]);
    expect(problems).toEqual([{ line: 1, text: line, reason: `text that ip route does not print, ignored: ${JSON.stringify(tail)}` }]);
  });

  it('never throws on arbitrary text', () => {
    const junk = ['', '\\', 'default via', 'nexthop', '  nexthop via', 'local', 'via via via', '0/abc', '\u0000\u00ff', 'a'.repeat(10_000), 'dev dev dev dev'];
    for (const text of junk) expect(() => parseRoutes(text)).not.toThrow();
    expect(parseRoutes(junk.join('\n')).records).toEqual([]);
  });
});
