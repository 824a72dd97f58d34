import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseIpset } from '../../../agent/sources/ipset.ts';
import { diffByKey, indexByKey } from '../../../contract/diff.ts';
import type { IpsetMember, IpsetRecord, IpsetSet } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/ipset/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/ipset/${name.replace(/\.txt$/, '')}.golden.json`;

const setsOf = (records: readonly IpsetRecord[]): IpsetSet[] => records.filter((r): r is IpsetSet => r.kind === 'set');
const membersOf = (records: readonly IpsetRecord[], set?: string): IpsetMember[] =>
  records.filter((r): r is IpsetMember => r.kind === 'member' && (set === undefined || r.set === set));
const elements = (records: readonly IpsetRecord[], set: string): string[] => membersOf(records, set).map((m) => m.member).sort();

/** Every record decodes with the shared schema, the collector's trust boundary. */
function expectValidRecords(records: readonly IpsetRecord[]): void {
  for (const r of records) expect(sources.ipset.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}

/** Parses one `add` line after the given `create` line and returns its member. */
function memberOf(create: string, add: string): IpsetMember {
  const { records, problems } = parseIpset(`${create}\n${add}\n`);
  expect(problems).toEqual([]);
  const [m] = membersOf(records);
  if (m === undefined) throw new Error(`no member parsed from ${add}`);
  return m;
}

describe('parseIpset on `ipset save` captured in a lab namespace', () => {
  it('reads the sets kube-proxy\'s IPVS mode keeps for an externalTrafficPolicy: Local LoadBalancer Service', async () => {
    const name = 'lab-ipset-save-kube-proxy-lb-local.txt';
    const result = parseIpset(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    // pkg/proxy/ipvs/proxier.go ipsetInfo, with the types it gives each set.
    expect(setsOf(records).map((s) => [s.name, s.type])).toEqual([
      ['KUBE-LOOP-BACK', 'hash:ip,port,ip'],
      ['KUBE-CLUSTER-IP', 'hash:ip,port'],
      ['KUBE-EXTERNAL-IP', 'hash:ip,port'],
      ['KUBE-EXTERNAL-IP-LOCAL', 'hash:ip,port'],
      ['KUBE-LOAD-BALANCER', 'hash:ip,port'],
      ['KUBE-LOAD-BALANCER-FW', 'hash:ip,port'],
      ['KUBE-LOAD-BALANCER-LOCAL', 'hash:ip,port'],
      ['KUBE-LOAD-BALANCER-SOURCE-IP', 'hash:ip,port,ip'],
      ['KUBE-LOAD-BALANCER-SOURCE-CIDR', 'hash:ip,port,net'],
      ['KUBE-NODE-PORT-TCP', 'bitmap:port'],
      ['KUBE-NODE-PORT-LOCAL-TCP', 'bitmap:port'],
      ['KUBE-NODE-PORT-UDP', 'bitmap:port'],
      ['KUBE-NODE-PORT-LOCAL-UDP', 'bitmap:port'],
      ['KUBE-NODE-PORT-SCTP-HASH', 'hash:ip,port'],
      ['KUBE-NODE-PORT-LOCAL-SCTP-HASH', 'hash:ip,port'],
      ['KUBE-HEALTH-CHECK-NODE-PORT', 'bitmap:port'],
      ['KUBE-IPVS-IPS', 'hash:ip'],
    ]);
    // pkg/util/ipset createSet(): family/hashsize/maxelem for hash types, range for bitmap:port.
    const clusterIp = setsOf(records).find((s) => s.name === 'KUBE-CLUSTER-IP');
    expect(clusterIp).toMatchObject({ family: 'inet', flags: [], options: { hashsize: '1024', maxelem: '65536', bucketsize: '12' } });
    expect(setsOf(records).find((s) => s.name === 'KUBE-NODE-PORT-TCP')).toMatchObject({ family: null, options: { range: '0-65535' }, flags: [] });

    expect(elements(records, 'KUBE-CLUSTER-IP')).toEqual(['10.96.0.1,tcp:443', '10.96.0.10,tcp:53', '10.96.0.10,udp:53', '10.96.100.10,tcp:80']);
    const lb = { address: '198.18.0.100', protocol: 'tcp', port: 80, second: null };
    expect(membersOf(records, 'KUBE-LOAD-BALANCER')).toEqual([expect.objectContaining({ member: '198.18.0.100,tcp:80', ...lb })]);
    expect(membersOf(records, 'KUBE-LOAD-BALANCER-LOCAL')).toEqual([expect.objectContaining({ member: '198.18.0.100,tcp:80', ...lb })]);
    // bitmap:port keeps no protocol: the set's name says it.
    for (const set of ['KUBE-NODE-PORT-TCP', 'KUBE-NODE-PORT-LOCAL-TCP'])
      expect(membersOf(records, set)).toEqual([expect.objectContaining({ member: '30080', address: null, protocol: null, port: 30080 })]);
    expect(membersOf(records, 'KUBE-HEALTH-CHECK-NODE-PORT').map((m) => m.port)).toEqual([31234]);
    expect(membersOf(records, 'KUBE-LOOP-BACK')).toEqual([expect.objectContaining({
      member: '10.244.1.5,tcp:8080,10.244.1.5', address: '10.244.1.5', protocol: 'tcp', port: 8080, second: '10.244.1.5',
    })]);
    expect(elements(records, 'KUBE-IPVS-IPS')).toEqual(['10.96.0.1', '10.96.0.10', '10.96.100.10', '198.18.0.100']);
    for (const empty of ['KUBE-EXTERNAL-IP', 'KUBE-LOAD-BALANCER-FW', 'KUBE-LOAD-BALANCER-SOURCE-CIDR', 'KUBE-NODE-PORT-UDP'])
      expect(membersOf(records, empty)).toEqual([]);
    expect(membersOf(records).every((m) => !m.nomatch && m.comment === null && m.timeout === null && m.packets === null)).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads every set type kube-proxy uses, IPv6 sets and the timeout, counters, comment and nomatch extensions', async () => {
    const name = 'lab-ipset-save-types.txt';
    const result = parseIpset(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(setsOf(records).map((s) => `${s.name} ${s.type} ${s.family ?? '-'}`)).toEqual([
      'KUBE-CLUSTER-IP hash:ip,port inet',
      'KUBE-LOOP-BACK hash:ip,port,ip inet',
      'KUBE-LOAD-BALANCER-SOURCE-CIDR hash:ip,port,net inet',
      'KUBE-NODE-PORT-UDP bitmap:port -',
      'KUBE-IPVS-IPS hash:ip inet',
      'pod-subnets hash:net inet',
      'KUBE-6-CLUSTER-IP hash:ip,port inet6',
      'KUBE-6-LOOP-BACK hash:ip,port,ip inet6',
      'blocked hash:ip,port inet',
      'empty bitmap:port -',
    ]);
    expect(membersOf(records, 'KUBE-CLUSTER-IP').map((m) => `${m.address} ${m.protocol}:${m.port}`).sort()).toEqual([
      '10.96.0.10 tcp:53', '10.96.0.10 udp:53', '10.96.0.20 sctp:9899',
    ]);
    // The net of hash:ip,port,net; ipset leaves out a /32.
    expect(membersOf(records, 'KUBE-LOAD-BALANCER-SOURCE-CIDR').map((m) => m.second).sort()).toEqual(['10.0.0.0/24', '198.19.7.7']);
    // `add KUBE-NODE-PORT-UDP udp:30054` is saved as a bare port.
    expect(elements(records, 'KUBE-NODE-PORT-UDP')).toEqual(['30053', '30054']);
    expect(membersOf(records, 'pod-subnets').map((m) => [m.address, m.nomatch]).sort()).toEqual([
      ['10.244.0.0/16', false], ['10.245.0.0/16', true], ['198.18.0.1', false],
    ]);
    // `fd00:10:96:0:0:0:0:1` was added; the kernel gives it back compressed.
    expect(elements(records, 'KUBE-6-CLUSTER-IP')).toEqual(['fd00:10:96::1,tcp:443', 'fd00:10:96::a,udp:53']);
    expect(membersOf(records, 'KUBE-6-LOOP-BACK')[0]).toMatchObject({ address: 'fd00:10:244:1::5', port: 8080, second: 'fd00:10:244:1::5' });

    expect(setsOf(records).find((s) => s.name === 'blocked')).toMatchObject({ options: { timeout: '600' }, flags: ['counters', 'comment'] });
    const blocked = new Map(membersOf(records, 'blocked').map((m) => [m.address, m]));
    expect(blocked.get('10.0.0.66')).toMatchObject({ protocol: 'tcp', port: 22, timeout: 0, packets: 0, bytes: 0, comment: 'ssh probe, kept 10 min' });
    // icmp carries a type where other protocols have a port; gre a port 0.
    expect(blocked.get('10.0.0.67')).toMatchObject({ member: '10.0.0.67,icmp:echo-request', protocol: 'icmp', port: null, comment: null });
    expect(blocked.get('10.0.0.68')).toMatchObject({ protocol: 'gre', port: 0 });
    expect(blocked.get('10.0.0.67')?.timeout).toBeGreaterThan(500);
    expect(membersOf(records, 'empty')).toEqual([]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('refuses `ipset list` output with one problem that says to use `ipset save`', () => {
    const { records, problems } = parseIpset(fixture('lab-ipset-list-kube-proxy.txt'));
    expect(records).toEqual([]);
    expect(problems).toEqual([{
      line: 1,
      text: 'Name: KUBE-LOOP-BACK',
      reason: '`ipset list` output: this parser reads `ipset save` (create/add lines); take the sets with `ipset save` instead (the listing that starts here is skipped)',
    }]);
  });
});

describe('parseIpset, one line at a time', () => {
  const HASH_IP_PORT = 'create S hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x8ca9039b';

  it('reads a create line of an ipset older than 7.x, without bucketsize and initval', () => {
    // As kube-proxy creates it and as the 6.x Header lines of kubernetes#54203 and calico#2405 show it.
    const line = 'create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536';
    expect(parseIpset(`${line}\n`)).toEqual({
      records: [{ kind: 'set', name: 'KUBE-CLUSTER-IP', type: 'hash:ip,port', family: 'inet', options: { hashsize: '1024', maxelem: '65536' }, flags: [], raw: line }],
      problems: [],
    });
  });

  it.each([
    ['an ip,port element', HASH_IP_PORT, 'add S 10.96.0.10,udp:53', { address: '10.96.0.10', protocol: 'udp', port: 53, second: null }],
    ['an IPv6 element', HASH_IP_PORT.replace('inet', 'inet6'), 'add S fd00::a,tcp:53', { address: 'fd00::a', protocol: 'tcp', port: 53 }],
    ['an ip,port,ip element', 'create S hash:ip,port,ip family inet', 'add S 10.244.1.5,tcp:8080,10.244.1.5', { address: '10.244.1.5', port: 8080, second: '10.244.1.5' }],
    ['an ip,port,net element', 'create S hash:ip,port,net family inet', 'add S 198.18.0.100,tcp:80,10.0.0.0/8', { second: '10.0.0.0/8' }],
    ['a bitmap:port element', 'create S bitmap:port range 0-65535', 'add S 30080', { address: null, protocol: null, port: 30080 }],
    ['a net,iface element', 'create S hash:net,iface family inet', 'add S 10.1.0.0/16,physdev:eth1', { address: '10.1.0.0/16', protocol: null, port: null }],
    ['a list:set element', 'create S list:set size 8', 'add S KUBE-CLUSTER-IP', { address: null, member: 'KUBE-CLUSTER-IP' }],
    ['an icmp type/code', HASH_IP_PORT, 'add S 10.0.0.2,icmp:8/7', { protocol: 'icmp', port: null }],
    ['a nomatch element', 'create S hash:net family inet', 'add S 10.245.0.0/16 nomatch', { nomatch: true, address: '10.245.0.0/16' }],
    ['skbinfo options', HASH_IP_PORT, 'add S 10.0.0.1,tcp:1 skbmark 0x1/0xff skbprio 1:2 skbqueue 3', { port: 1 }],
    ['a comment with blanks', HASH_IP_PORT, 'add S 10.0.0.1,tcp:22 comment "a b  c"', { comment: 'a b  c' }],
  ] as const)('reads %s', (_what, create, add, expected) => {
    expect(memberOf(create, add)).toMatchObject({ ...expected, raw: add });
  });

  it('reads an element whose set has no create line (a grepped excerpt) from its shape', () => {
    const { records, problems } = parseIpset('add KUBE-LOOP-BACK 10.244.1.5,tcp:8080,10.244.1.5\nadd KUBE-NODE-PORT-TCP 30080\n');
    expect(problems).toEqual([]);
    expect(membersOf(records).map((m) => [m.set, m.address, m.protocol, m.port, m.second])).toEqual([
      ['KUBE-LOOP-BACK', '10.244.1.5', 'tcp', 8080, '10.244.1.5'],
      ['KUBE-NODE-PORT-TCP', null, null, 30080, null],
    ]);
  });

  it.each([
    ['a create line without a type', 'create S', '`create` without a set name and type'],
    ['an add line without an element', 'add S', '`add` without a set name and element'],
    ['a family that does not exist', 'create T hash:ip family ipx', 'family `ipx` is neither inet nor inet6'],
    ['an element that is not an address', 'add S 10.0.0.x,tcp:80', '`10.0.0.x` in element `10.0.0.x,tcp:80` is not an address'],
    ['an element missing its port', 'add S 10.0.0.1', "element `10.0.0.1` has 1 part(s) where the set's type has 2"],
    ['a port out of range', 'add S 10.0.0.1,tcp:70000', '`tcp:70000` in element `10.0.0.1,tcp:70000` is not a port or proto:port'],
    ['a timeout that is not a number', 'add S 10.0.0.1,tcp:80 timeout soon', '`timeout soon` is not a number'],
    ['an option cut off', 'add S 10.0.0.1,tcp:80 timeout', '`timeout` has no value (a cut line?)'],
    ['a comment cut inside its quotes', 'add S 10.0.0.1,tcp:80 comment "half', 'unterminated quote (a cut line?)'],
    ['a restore command', 'flush S', 'not an `ipset save` line (expected `create SET TYPE …` or `add SET ELEMENT …`)'],
    ['a shell prompt', '$ sudo ipset save', 'not an `ipset save` line (expected `create SET TYPE …` or `add SET ELEMENT …`)'],
    ['an element option ipset does not print', 'add S 10.0.0.1,tcp:80 wobble', 'element option(s) `wobble` not known (ignored)'],
  ])('reports %s as a problem with its line number', (_what, line, reason) => {
    const { records, problems } = parseIpset(`${HASH_IP_PORT}\nadd S 10.0.0.1,tcp:1\n${line}\nadd S 10.0.0.1,tcp:2\n`);
    expect(problems).toEqual([{ line: 3, text: line, reason }]);
    const ports = membersOf(records).map((m) => m.port);
    expect(ports[0]).toBe(1);
    expect(ports.at(-1)).toBe(2);
  });

  it.each([
    ['-o xml', '<ipsets>\n<ipset name="S">\n<type>hash:ip</type>\n</ipset>\n</ipsets>', '`ipset … -o xml` output: take the sets with a plain `ipset save` instead (skipped up to the next create/add line)'],
    ['-o json', '[\n  {\n    "name" : "S",\n    "type" : "hash:ip"\n  }\n]', '`ipset … -o json` output: take the sets with a plain `ipset save` instead (skipped up to the next create/add line)'],
  ])('refuses %s output with one problem, then reads save lines again', (_what, text, reason) => {
    const { records, problems } = parseIpset(`${text}\ncreate T bitmap:port range 0-65535\nadd T 30080\n`);
    expect(problems).toEqual([{ line: 1, text: text.split('\n')[0], reason }]);
    expect(membersOf(records).map((m) => m.port)).toEqual([30080]);
  });

  it('strips CRLF line ends but keeps the line otherwise as printed in raw', () => {
    const { records } = parseIpset('create S bitmap:port range 0-65535\r\nadd S 30080\r\n');
    expect(records.map((r) => r.raw)).toEqual(['create S bitmap:port range 0-65535', 'add S 30080']);
  });

  it('never throws on arbitrary input', () => {
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    const alphabet = ['create ', 'add ', 'S ', 'hash:ip,port ', 'bitmap:port ', '10.0.0.1', ',', 'tcp:', '80', '"', ' ', '\n', '/', '::', 'timeout ', 'Name: ', '<', 'x'];
    for (let n = 0; n < 300; n++) {
      let text = '';
      for (let k = 0; k < 60; k++) text += alphabet[Math.floor(rand() * alphabet.length)];
      const result = parseIpset(text);
      for (const p of result.problems) expect(p.line).toBeGreaterThan(0);
      expectValidRecords(result.records);
    }
  });
});

describe('the ipset source spec', () => {
  const spec = sources.ipset;
  const kubeProxy = parseIpset(fixture('lab-ipset-save-kube-proxy-lb-local.txt')).records;

  it('keys a set by name and a member by set and element, so one element in two sets is two records', () => {
    const keys = kubeProxy.map((r) => spec.keyOf(r));
    expect(new Set(keys).size).toBe(keys.length);
    expect(keys).toContain('set KUBE-LOAD-BALANCER-LOCAL');
    expect(keys).toContain('member KUBE-LOAD-BALANCER 198.18.0.100,tcp:80');
    expect(keys).toContain('member KUBE-LOAD-BALANCER-LOCAL 198.18.0.100,tcp:80');
  });

  it('reports a removed LoadBalancer IP and does not count a hash set growing its hashsize as a change', () => {
    const next = parseIpset(fixture('lab-ipset-save-kube-proxy-lb-local.txt')
      .replace('add KUBE-LOAD-BALANCER-LOCAL 198.18.0.100,tcp:80\n', '')
      .replace('create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024', 'create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 2048')).records;
    const diff = diffByKey(indexByKey(kubeProxy, spec).map, indexByKey(next, spec).map, spec);
    expect(diff.removed).toEqual(['member KUBE-LOAD-BALANCER-LOCAL 198.18.0.100,tcp:80']);
    expect(diff.added).toEqual([]);
    expect(diff.changed).toEqual([]);
  });

  it('reports a set re-created with another maxelem as changed', () => {
    const next = parseIpset(fixture('lab-ipset-save-kube-proxy-lb-local.txt').replace('create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536', 'create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 131072')).records;
    const diff = diffByKey(indexByKey(kubeProxy, spec).map, indexByKey(next, spec).map, spec);
    expect(diff.changed.map((r) => spec.keyOf(r))).toEqual(['set KUBE-CLUSTER-IP']);
  });

  it('sends a member whose counters moved as refreshed, but not one whose timeout only counted down', () => {
    const create = 'create B hash:ip,port family inet timeout 600 counters';
    const at = (timeout: number, packets: number) => parseIpset(`${create}\nadd B 10.0.0.1,tcp:80 timeout ${timeout} packets ${packets} bytes ${packets * 60}\n`).records;
    const d1 = diffByKey(indexByKey(at(500, 1), spec).map, indexByKey(at(499, 1), spec).map, spec);
    expect([d1.changed, d1.refreshed]).toEqual([[], []]);
    const d2 = diffByKey(indexByKey(at(500, 1), spec).map, indexByKey(at(499, 2), spec).map, spec);
    expect(d2.refreshed.map((r) => spec.keyOf(r))).toEqual(['member B 10.0.0.1,tcp:80']);
  });
});
