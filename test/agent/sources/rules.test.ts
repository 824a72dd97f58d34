import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parseRules } from '../../../agent/sources/rules.ts';
import type { RoutingRule } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/ip-route/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/ip-route/${name.replace(/\.txt$/, '')}.golden.json`;

function expectValidRecords(records: readonly RoutingRule[]): void {
  for (const r of records) expect(sources.rules.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}
/** `PRIO [not] from X [to Y] [fwmark M] -> table|action`, the way a reader summarises a rule. */
const summary = (r: RoutingRule): string =>
  `${r.priority} ${r.not ? 'not ' : ''}from ${r.from}${r.to === null ? '' : ` to ${r.to}`}${r.fwmark === null ? '' : ` fwmark ${r.fwmark}`}${
    r.iif === null ? '' : ` iif ${r.iif}`}${r.oif === null ? '' : ` oif ${r.oif}`} -> ${r.table ?? r.action ?? '?'}`;

function ruleOf(line: string, defaults?: Parameters<typeof parseRules>[1]): RoutingRule {
  const { records, problems } = parseRules(line, defaults);
  expect(problems).toEqual([]);
  expect(records).toHaveLength(1);
  return records[0] as RoutingRule;
}

describe('parseRules on verbatim ip rule output', () => {
  it('reads the 16 VPC CNI rules, keeping the annotated one and reporting its annotation', async () => {
    const name = 'eks-2018-reinvent-ip-rule-show-vpc-cni.txt';
    const result = parseRules(fixture(name), { family: 'inet' });
    const { records, problems } = result;
    expectValidRecords(records);
    expect(records.map(summary)).toEqual([
      '0 from all -> local',
      '512 from all to 192.168.24.73 -> main',
      '512 from all to 192.168.29.205 -> main',
      '512 from all to 192.168.7.62 -> main',
      '512 from all to 192.168.9.15 -> main',
      '512 from all to 192.168.7.54 -> main',
      '512 from all to 192.168.3.24 -> main',
      '512 from all to 192.168.10.216 -> main',
      '512 from all to 192.168.20.139 -> main',
      '1024 not from all to 192.168.0.0/16 -> main',
      '1024 from all fwmark 0x80/0x80 -> main',
      '1536 from 192.168.3.24 -> 2',
      '1536 from 192.168.10.216 -> 2',
      '1536 from 192.168.20.139 -> 2',
      '32766 from all -> main',
      '32767 from all -> default',
    ]);
    expect(records.every((r) => r.family === 'inet' && r.action === null)).toBe(true);
    // The TAB after `PRIO:` is real in this copy.
    expect(records[0]?.raw).toBe('0:\tfrom all lookup local');
    expect(records[11]?.raw).toBe('1536:\tfrom 192.168.3.24 lookup 2 <-- these Pods uses IPs from secondary ENI (eth1)');
    expect(problems).toEqual([
      {
        line: 12,
        text: '1536:\tfrom 192.168.3.24 lookup 2 <-- these Pods uses IPs from secondary ENI (eth1)',
        reason: 'text that ip rule does not print, ignored: "<-- these Pods uses IPs from secondary ENI (eth1)"',
      },
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseRules on a lab node (lab-capture.sh, iproute2 6.1)', () => {
  it('reads `ip rule` with VPC-CNI-style priorities', async () => {
    const name = 'lab-node-ip-rule.txt';
    const result = parseRules(fixture(name), { family: 'inet' });
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map(summary)).toEqual([
      '0 from all -> local',
      '512 from all to 10.244.1.2 -> main',
      '512 from all to 10.244.1.3 -> main',
      '1024 not from all to 10.0.0.0/16 -> main',
      '1024 from all fwmark 0x80/0x80 -> main',
      '1536 from 10.244.1.3 -> 2',
      '32766 from all -> main',
      '32767 from all -> default',
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads `ip -6 rule`: the family of `from all` rules comes from the caller', async () => {
    const name = 'lab-node-ip-6-rule.txt';
    const result = parseRules(fixture(name), { family: 'inet6' });
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map((r) => [r.family, summary(r)])).toEqual([
      ['inet6', '0 from all -> local'],
      ['inet6', '1000 from fd00:10::/64 -> main'],
      ['inet6', '32766 from all -> main'],
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads every rule action and selector', async () => {
    const name = 'lab-types-ip-rule.txt';
    const result = parseRules(fixture(name), { family: 'inet' });
    expect(result.problems).toEqual([]);
    expectValidRecords(result.records);
    expect(result.records.map(summary)).toEqual([
      '0 from all -> local',
      '100 from 10.9.0.0/16 -> blackhole',
      '101 from all to 10.8.0.0/16 -> unreachable',
      '102 from all iif eth0 -> prohibit',
      '103 from all fwmark 0x4000/0x4000 oif eth0 -> 100',
      '104 from all -> goto 32766',
      '105 from all -> 100',
      '106 not from 10.0.0.0/8 iif lo -> main',
      '107 from all -> 100',
      '108 from all -> 100',
      '109 from 10.1.0.0/24 -> nop',
      '32766 from all -> main',
      '32767 from all -> default',
    ]);
    expect(result.records.filter((r) => r.action !== null).every((r) => r.table === null)).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads IPv6 rule actions', async () => {
    const name = 'lab-types-ip-6-rule.txt';
    const result = parseRules(fixture(name), { family: 'inet6' });
    expect(result.problems).toEqual([]);
    expect(result.records.map(summary)).toEqual(['0 from all -> local', '200 from fd00:1::/64 -> unreachable', '201 from all to fd00:2::/64 -> 100', '32766 from all -> main']);
    expect(result.records.every((r) => r.family === 'inet6')).toBe(true);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseRules on single lines', () => {
  it.each<[string, string, string]>([
    ['pre-5.1 trailing space', '32766:\tfrom all lookup main ', '32766 from all -> main'],
    ['an expanded TAB', '512:    from all to 192.168.24.73 lookup main', '512 from all to 192.168.24.73 -> main'],
    ['no blank after the colon', '0:from all lookup local', '0 from all -> local'],
    ['an interface that does not exist yet', '100:\tfrom all iif cali123 [detached] lookup 200', '100 from all iif cali123 -> 200'],
    ['a goto to a missing priority', '90:\tfrom all goto 95 [unresolved]', '90 from all -> goto 95'],
    ['a mark without mask', '1000:\tfrom all fwmark 0xca6c lookup 51820', '1000 from all fwmark 0xca6c -> 51820'],
    ['a not before an iif selector', '101:\tnot from all iif lo lookup 100 proto static', '101 not from all iif lo -> 100'],
    ['an old NAT rule', '320:\tfrom 10.0.0.1 map-to 192.0.2.1', '320 from 10.0.0.1 -> map-to 192.0.2.1'],
    ['an uncompressed IPv6 source', '200:\tfrom 2001:0DB8:0:0::/64 lookup 100', '200 from 2001:db8::/64 -> 100'],
    ['suppress_prefixlength and suppress_ifgroup', '100:\tfrom all lookup main suppress_prefixlength 0 suppress_ifgroup 3', '100 from all -> main'],
  ])('reads a rule with %s', (_what, line, expected) => {
    const rule = ruleOf(line);
    expect(summary(rule)).toBe(expected);
    expect(rule.raw).toBe(line);
  });

  it('takes the family from the rule addresses before the caller default', () => {
    expect(ruleOf('200:\tfrom all to fd00::/8 lookup 100', { family: 'inet' }).family).toBe('inet6');
    expect(ruleOf('200:\tfrom 10.0.0.0/8 lookup 100', { family: 'inet6' }).family).toBe('inet');
    expect(ruleOf('0:\tfrom all lookup local').family).toBe('inet');
  });

  it.each<[string, string]>([
    ['from all lookup main', 'not an ip rule line (expected `PRIORITY:` then the selector)'],
    ['512:\tfrom all to', '`to` without a value (a cut line?)'],
    ['512:\tfrom', '`from` without a value (a cut line?)'],
    ['512:\tto 10.0.0.1 lookup main', 'no `from` selector after the priority (iproute2 always prints one)'],
    ['1536:\tfrom 10.x.x.x lookup 2', 'from "10.x.x.x" is not `all` or a prefix'],
    ['512:\tfrom all to web1 lookup main', 'to "web1" is not a prefix'],
    ['99999999999:\tfrom all lookup main', 'priority 99999999999 is out of range'],
  ])('reports %j as a problem with its line number', (line, reason) => {
    const { records, problems } = parseRules(`0:\tfrom all lookup local\n${line}\n`);
    expect(records).toHaveLength(1);
    expect(problems).toEqual([{ line: 2, text: line, reason }]);
  });

  it('never throws on arbitrary text', () => {
    const junk = ['0:', ':', '1: not', '1: not from', '1: from all lookup', '1: from all goto', '\\', '\u0000', '9'.repeat(400) + ':'];
    for (const text of junk) expect(() => parseRules(text)).not.toThrow();
    expect(parseRules(junk.join('\n')).records).toEqual([]);
  });
});
