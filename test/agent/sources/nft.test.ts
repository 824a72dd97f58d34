import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseNft } from '../../../agent/sources/nft.ts';
import type { NftObject } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/nft/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/nft/${name.replace(/\.json$/, '')}.golden.json`;

const ofKind = (records: readonly NftObject[], kind: NftObject['kind']) => records.filter((r) => r.kind === kind);
const elementsOf = (records: readonly NftObject[], set: string) => ofKind(records, 'element').filter((r) => r.name === set).map((r) => r.text);
const rulesIn = (records: readonly NftObject[], chain: string) => ofKind(records, 'rule').filter((r) => r.name === chain);

function expectValidRecords(records: readonly NftObject[]): void {
  for (const r of records) expect(sources.nft.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}

/** Wraps nft objects in the document `nft -j list ruleset` prints. */
const doc = (...items: unknown[]): string =>
  JSON.stringify({ nftables: [{ metainfo: { version: '1.0.6', release_name: 'Lester Gooch #5', json_schema_version: 1 } }, ...items] });

describe('parseNft on a kube-proxy nftables ruleset captured in a lab namespace', () => {
  // lab-capture.sh loads lab-kube-proxy-ruleset.nft (written the way
  // kube-proxy's nftables proxier writes its transaction) with `nft -f` into a
  // fresh namespace and lists it with `nft -j list ruleset`. The .nft input is
  // the independent statement of what the listing must contain.
  const input = fixture('lab-kube-proxy-ruleset.nft').split('\n');
  const result = parseNft(fixture('lab-kube-proxy-ruleset.json'));
  const { records, problems } = result;

  it('makes one record per table, chain, rule, set and map of the input', async () => {
    expect(problems).toEqual([]);
    expectValidRecords(records);
    const count = (prefix: string) => input.filter((l) => l.startsWith(prefix)).length;
    expect(ofKind(records, 'table').map((r) => r.text)).toEqual(['table ip kube-proxy']);
    expect(ofKind(records, 'chain')).toHaveLength(count('add chain '));
    expect(ofKind(records, 'rule')).toHaveLength(count('add rule '));
    expect(ofKind(records, 'set').map((r) => r.name)).toEqual(['cluster-ips', 'nodeport-ips']);
    expect(ofKind(records, 'map').map((r) => r.name)).toEqual([
      'firewall-ips', 'no-endpoint-nodeports', 'no-endpoint-services', 'service-ips', 'service-nodeports',
    ]);
    expect(records.every((r) => r.family === 'ip' && r.table === 'kube-proxy')).toBe(true);
    // kube-proxy adds no counters.
    expect(records.every((r) => r.packets === null && r.bytes === null)).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden('lab-kube-proxy-ruleset.json'));
  });

  it('renders every map and set element the way the input wrote it', () => {
    // `add element ip kube-proxy service-ips { 10.96.100.10 . tcp . 80 : goto service-… }`
    const written = new Map<string, string[]>();
    for (const line of input) {
      const m = /^add element ip kube-proxy (\S+) \{ (.*) \}$/.exec(line);
      if (m?.[1] === undefined || m[2] === undefined) continue;
      written.set(m[1], [...(written.get(m[1]) ?? []), m[2]]);
    }
    expect([...written.keys()].sort()).toEqual(['cluster-ips', 'no-endpoint-services', 'nodeport-ips', 'service-ips', 'service-nodeports']);
    for (const [set, elements] of written) expect(elementsOf(records, set).sort(), set).toEqual(elements.sort());
    expect(ofKind(records, 'element')).toHaveLength([...written.values()].flat().length);
  });

  it('finds the Services in the service-ips and service-nodeports verdict maps', () => {
    expect(elementsOf(records, 'service-ips')).toEqual([
      '10.96.0.10 . udp . 53 : goto service-FY5PMXPG-kube-system/kube-dns/udp/dns',
      '10.96.100.10 . tcp . 80 : goto service-AXK6CI2C-demo/web/tcp/http',
    ]);
    expect(elementsOf(records, 'service-nodeports')).toEqual(['tcp . 30080 : goto external-AXK6CI2C-demo/web/tcp/http']);
    expect(elementsOf(records, 'no-endpoint-services')).toEqual(['10.96.100.20 . tcp . 80 comment "demo/empty:http" : goto reject-chain']);
    const element = ofKind(records, 'element').find((r) => r.name === 'service-nodeports');
    expect(element).toEqual({
      kind: 'element', family: 'ip', table: 'kube-proxy', name: 'service-nodeports', handle: null,
      text: 'tcp . 30080 : goto external-AXK6CI2C-demo/web/tcp/http', packets: null, bytes: null,
      raw: 'tcp . 30080 : goto external-AXK6CI2C-demo/web/tcp/http',
    });
  });

  it('shows where each endpoint chain DNATs to, and how the service chain picks one', () => {
    const dnat = ofKind(records, 'rule').filter((r) => r.text.includes(' dnat to '));
    expect(dnat.map((r) => [r.name, r.text])).toEqual([
      ['endpoint-6UVIXZI4-demo/web/tcp/http__10.244.1.5/8080', 'meta l4proto tcp dnat to 10.244.1.5:8080'],
      ['endpoint-22EEGIMG-demo/web/tcp/http__10.244.2.7/8080', 'meta l4proto tcp dnat to 10.244.2.7:8080'],
      ['endpoint-SHKW4FT7-kube-system/kube-dns/udp/dns__10.244.0.3/53', 'meta l4proto udp dnat to 10.244.0.3:53'],
      ['endpoint-4HJWWRW7-kube-system/kube-dns/udp/dns__10.244.1.3/53', 'meta l4proto udp dnat to 10.244.1.3:53'],
      ['endpoint-XNQT4B3W-kube-system/kube-dns/udp/dns__10.244.2.3/53', 'meta l4proto udp dnat to 10.244.2.3:53'],
    ]);
    expect(rulesIn(records, 'service-AXK6CI2C-demo/web/tcp/http').map((r) => r.text)).toEqual([
      'ip daddr 10.96.100.10 ip saddr != 10.244.0.0/16 jump mark-for-masquerade',
      'numgen random mod 2 vmap { 0 : goto endpoint-6UVIXZI4-demo/web/tcp/http__10.244.1.5/8080, 1 : goto endpoint-22EEGIMG-demo/web/tcp/http__10.244.2.7/8080 }',
    ]);
    expect(rulesIn(records, 'services').map((r) => r.text)).toEqual([
      'ip daddr . meta l4proto . th dport vmap @service-ips',
      'ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports',
    ]);
    expect(rulesIn(records, 'masquerading').map((r) => r.text)).toEqual([
      'meta mark & 16384 == 0 return', 'meta mark set meta mark ^ 16384', 'masquerade fully-random',
    ]);
  });

  it('uses a rule\'s comment as its text and keeps the rule as compact JSON', () => {
    const [reject, drop] = rulesIn(records, 'cluster-ips-check');
    expect(reject?.text).toBe('Reject traffic to invalid ports of ClusterIPs');
    expect(drop?.text).toBe('Drop traffic to unallocated ClusterIPs');
    expect(JSON.parse(reject?.raw ?? 'null')).toMatchObject({ rule: { chain: 'cluster-ips-check', handle: reject?.handle, comment: 'Reject traffic to invalid ports of ClusterIPs' } });
    // Compact: nft's own `"key": value` spacing is gone.
    expect(reject?.raw).not.toContain('": ');
  });

  it('describes base chains with their hook, and leaves elements out of a map\'s own record', () => {
    expect(ofKind(records, 'chain').find((r) => r.name === 'nat-output')?.text).toBe('chain nat-output { type nat hook output priority -100; policy accept; }');
    expect(ofKind(records, 'chain').find((r) => r.name === 'services')?.text).toBe('chain services');
    const serviceIps = ofKind(records, 'map').find((r) => r.name === 'service-ips');
    expect(serviceIps?.text).toBe('map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"; }');
    expect(JSON.parse(serviceIps?.raw ?? 'null')).toEqual({
      map: { family: 'ip', name: 'service-ips', table: 'kube-proxy', type: ['ipv4_addr', 'inet_proto', 'inet_service'], handle: serviceIps?.handle, comment: 'ClusterIP, ExternalIP and LoadBalancer IP traffic', map: 'verdict' },
    });
  });
});

describe('parseNft on a ruleset with counters', () => {
  // lab-counters.nft, listed after 3 UDP datagrams to port 53 and 1 to a blocked address.
  const result = parseNft(fixture('lab-counters.json'));

  it('fills packets and bytes from each rule\'s counter and leaves the values out of its text', async () => {
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(rulesIn(result.records, 'output').map((r) => [r.text, r.packets, r.bytes])).toEqual([
      ['blocked destinations', 1, 30], ['dns', 3, 90], ['tcp dport { 80, 443 } counter', 0, 0],
    ]);
    expect(elementsOf(result.records, 'blocked')).toEqual(['198.51.100.7', '203.0.113.0/25']);
    expect(ofKind(result.records, 'set')[0]?.text).toBe('set blocked { type ipv4_addr; flags interval; }');
    expect(ofKind(result.records, 'table')[0]).toMatchObject({ family: 'inet', table: 'node-firewall', name: null, handle: 1 });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden('lab-counters.json'));
  });

  it('sees a counter moving as a refresh, not as a change of the rule', () => {
    const before = parseNft(fixture('lab-counters.json')).records;
    const after = parseNft(fixture('lab-counters.json').replace('"packets": 3, "bytes": 90', '"packets": 4, "bytes": 120')).records;
    const dnsBefore = before.find((r) => r.text === 'dns');
    const dnsAfter = after.find((r) => r.text === 'dns');
    if (dnsBefore === undefined || dnsAfter === undefined) throw new Error('dns rule missing');
    expect(dnsAfter.packets).toBe(4);
    expect(sources.nft.keyOf(dnsAfter)).toBe(sources.nft.keyOf(dnsBefore));
    expect(sources.nft.sameState(dnsBefore, dnsAfter)).toBe(true);
    expect(sources.nft.refreshed?.(dnsBefore, dnsAfter)).toBe(true);
  });
});

describe('parseNft on elements and expressions kube-proxy uses', () => {
  it.each([
    ['a plain set element', 'cluster-ips', ['10.96.0.10'], '10.96.0.10'],
    ['a prefix', 's', [{ prefix: { addr: '203.0.113.0', len: 25 } }], '203.0.113.0/25'],
    ['a range', 's', [{ range: ['10.0.0.1', '10.0.0.9'] }], '10.0.0.1-10.0.0.9'],
    // Session affinity: the countdown is not part of the element.
    ['an affinity element with timeout and expires', 'affinity-X', [{ elem: { val: '10.0.0.2', timeout: 10800, expires: 9000 } }], '10.0.0.2 timeout 10800s'],
    ['a verdict map element with a comment', 'no-endpoint-nodeports', [[{ elem: { val: { concat: ['tcp', 3001] }, comment: 'ns2/svc2:p80' } }, { drop: null }]], 'tcp . 3001 comment "ns2/svc2:p80" : drop'],
    ['a firewall map element', 'firewall-ips', [[{ concat: ['5.6.7.8', 'tcp', 80] }, { goto: { target: 'firewall-HVFWP5L3-ns5/svc5/tcp/p80' } }]], '5.6.7.8 . tcp . 80 : goto firewall-HVFWP5L3-ns5/svc5/tcp/p80'],
    ['a data map element', 'm', [['10.0.0.1', '192.168.0.1']], '10.0.0.1 : 192.168.0.1'],
  ])('renders %s', (_what, set, elem, text) => {
    const { records, problems } = parseNft(doc({ set: { family: 'ip', name: set, table: 'kube-proxy', type: 'ipv4_addr', handle: 9, elem } }));
    expect(problems).toEqual([]);
    expect(elementsOf(records, set)).toEqual([text]);
  });

  it('counts an element that carries its own counter', () => {
    const { records } = parseNft(doc({ set: { family: 'ip', name: 's', table: 't', type: 'ipv4_addr', handle: 1, elem: [{ elem: { val: '10.0.0.1', counter: { packets: 7, bytes: 420 } } }] } }));
    expect(ofKind(records, 'element')[0]).toMatchObject({ text: '10.0.0.1', packets: 7, bytes: 420 });
  });

  it('renders the affinity update of kube-proxy\'s endpoint chains', () => {
    const rule = { family: 'ip', table: 'kube-proxy', chain: 'endpoint-X', handle: 5, expr: [{ set: { op: 'update', elem: { payload: { protocol: 'ip', field: 'saddr' } }, set: '@affinity-X' } }] };
    expect(parseNft(doc({ rule })).records[0]?.text).toBe('update @affinity-X { ip saddr }');
  });
});

describe('parseNft on input that is not a clean listing', () => {
  it('reports invalid JSON once, at the line where parsing failed, and returns no records', () => {
    const text = '{"nftables": [\n{"metainfo": {}},\n{"table": {"family": "ip", "name": "kube-proxy", "handle": 1}}\n{"chain": {}}\n]}';
    const { records, problems } = parseNft(text);
    expect(records).toEqual([]);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ line: 4, text: '{"chain": {}}' });
    expect(problems[0]?.reason).toMatch(/^not valid JSON: /);
  });

  it('reports `nft list ruleset` text (not -j) as not JSON on line 1', () => {
    const { records, problems } = parseNft('table ip kube-proxy {\n\tchain services {\n\t}\n}\n');
    expect(records).toEqual([]);
    expect(problems).toEqual([expect.objectContaining({ line: 1, text: 'table ip kube-proxy {' })]);
  });

  it('reports an unknown object kind with its line in a pretty-printed paste and goes on', () => {
    const parsed: unknown = JSON.parse(fixture('lab-counters.json'));
    const items = (parsed as { nftables: unknown[] }).nftables;
    items.splice(2, 0, { flowtable: { family: 'inet', name: 'ft', table: 'node-firewall', handle: 9, hook: 'ingress', prio: 0, dev: 'eth0' } });
    const pretty = JSON.stringify({ nftables: items }, null, 2);
    const flowtableLine = pretty.split('\n').findIndex((l) => l.includes('"flowtable"')) + 1;
    const { records, problems } = parseNft(pretty);
    expect(problems).toEqual([{ line: flowtableLine - 1, text: expect.stringContaining('"flowtable"'), reason: 'nft object kind `flowtable` is not tracked' }]);
    expect(records).toHaveLength(parseNft(fixture('lab-counters.json')).records.length);
  });

  it.each([
    ['a document without an nftables array', '{"ruleset": []}', 'JSON without an `nftables` array (not `nft -j list …` output)'],
    ['a bare array', '[1, 2]', 'JSON without an `nftables` array (not `nft -j list …` output)'],
  ])('reports %s', (_what, text, reason) => {
    expect(parseNft(text)).toEqual({ records: [], problems: [{ line: 1, text, reason }] });
  });

  it.each([
    ['an item with two keys', { table: { family: 'ip', name: 'a' }, chain: {} }, 'not an nft object (expected one key naming its kind)'],
    ['a table without a name', { table: { family: 'ip', handle: 1 } }, '`table` without a name'],
    ['a rule without a chain', { rule: { family: 'ip', table: 't', handle: 1, expr: [] } }, '`rule` without a chain'],
    ['a chain without a family', { chain: { table: 't', name: 'c' } }, '`chain` without a family'],
    ['a map that is not an object', { map: 'service-ips' }, '`map` is not an object'],
  ])('reports %s and keeps the other objects', (_what, item, reason) => {
    const good = { table: { family: 'ip', name: 'kube-proxy', handle: 1 } };
    const { records, problems } = parseNft(doc(item, good));
    expect(problems).toEqual([{ line: 1, text: JSON.stringify(item), reason }]);
    expect(records.map((r) => r.text)).toEqual(['table ip kube-proxy']);
  });

  it('returns nothing for empty output and for an empty ruleset', () => {
    expect(parseNft('')).toEqual({ records: [], problems: [] });
    expect(parseNft(doc())).toEqual({ records: [], problems: [] });
  });

  it('never throws, even on deeply nested expressions', () => {
    const nested = (depth: number) => `${'{"concat":['.repeat(depth)}"x"${']}'.repeat(depth)}`;
    const ruleWith = (expr: string) => `{"nftables":[{"rule":{"family":"ip","table":"t","chain":"c","handle":1,"expr":[${expr}]}}]}`;
    // Deeper than any ruleset: the rendering stops, the rule is kept.
    const { records } = parseNft(ruleWith(nested(200)));
    expect(records).toHaveLength(1);
    expect(records[0]?.text).toContain('…');
    // Deeper than the stack: one problem, still no exception.
    const hostile = parseNft(ruleWith(nested(200_000)));
    expect(hostile.records.length + hostile.problems.length).toBe(1);
    for (const text of ['{', 'null', '"nftables"', '{"nftables": [null, 1, "x", [], {}]}', '{"nftables": [{"rule": {"family": "ip", "table": "t", "chain": "c", "expr": "x"}}]}']) {
      expect(() => parseNft(text)).not.toThrow();
    }
  });
});
