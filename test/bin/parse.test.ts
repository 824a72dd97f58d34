import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { parsers } from '../../agent/parsers.ts';
import type { SourceName } from '../../contract/sources.ts';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const fixtures = join(root, 'test/fixtures');
const cli = join(root, 'bin/conntrail.js');

/** Which `conntrail parse` source reads each verbatim fixture. */
function sourceOf(dir: string, file: string): SourceName | null {
  if (file.endsWith('.golden.json') || file.endsWith('.sh') || file.endsWith('.md') || file.endsWith('.nft')) return null;
  switch (dir) {
    case 'conntrack': return 'conntrack';
    case 'conntrack-stat': return 'conntrack-stat';
    case 'iptables-save': return 'iptables';
    // `ipset list` output is input the parser refuses (test/agent/sources/ipset.test.ts).
    case 'ipset': return file.includes('ipset-list') ? null : 'ipset';
    case 'ipvsadm-ln': return 'ipvs';
    case 'ipvsadm-lnc': return 'ipvs-conn';
    case 'nft': return 'nft';
    case 'ip-route':
      if (/ip-rule|-rule\./.test(file)) return 'rules';
      if (/ip-(o-)?link/.test(file)) return 'links';
      if (/ip-(o-)?addr/.test(file)) return 'addrs';
      return 'routes';
    default: return null;
  }
}

const cases: [string, SourceName, string][] = [];
for (const dir of readdirSync(fixtures)) {
  if (dir === 'seeds' || dir.includes('.')) continue;
  for (const file of readdirSync(join(fixtures, dir))) {
    const source = sourceOf(dir, file);
    if (source !== null) cases.push([`${dir}/${file}`, source, join(fixtures, dir, file)]);
  }
}

async function parseCli(source: string, file: string): Promise<{ records: unknown[]; problems: unknown[] }> {
  const { stdout, stderr } = await run(process.execPath, [cli, 'parse', source, file], { maxBuffer: 64 << 20 });
  const lines = (s: string) => s.split('\n').filter(Boolean).map((l) => JSON.parse(l) as unknown);
  return { records: lines(stdout), problems: lines(stderr) };
}

describe('conntrail parse', () => {
  it('has a source for every kind of fixture', () => {
    expect(new Set(cases.map((c) => c[1]))).toEqual(new Set(['conntrack', 'conntrack-stat', 'iptables', 'ipset', 'ipvs', 'ipvs-conn', 'nft', 'rules', 'links', 'addrs', 'routes']));
  });

  it.each(cases)('%s: records on stdout, problems on stderr, as JSON lines', async (_name, source, file) => {
    const expected = parsers[source](readFileSync(file, 'utf8'));
    const got = await parseCli(source, file);
    expect(got.records).toEqual(JSON.parse(JSON.stringify(expected.records)));
    expect(got.problems).toEqual(JSON.parse(JSON.stringify(expected.problems)));
    expect(got.records.length).toBeGreaterThan(0);
  });

  it('reads standard input with -', async () => {
    const child = execFile(process.execPath, [cli, 'parse', 'sysctl', '-']);
    child.stdin?.end('net.ipv4.vs.conn_reuse_mode = 0\ngarbage\n');
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise((res) => child.on('close', res));
    expect(code).toBe(0);
    expect(JSON.parse(out)).toEqual({ name: 'net.ipv4.vs.conn_reuse_mode', value: '0', raw: 'net.ipv4.vs.conn_reuse_mode = 0' });
    expect(JSON.parse(err)).toMatchObject({ line: 2, text: 'garbage' });
  });

  it('refuses an unknown source with a usage error naming the valid ones', async () => {
    const err = await run(process.execPath, [cli, 'parse', 'netstat', '/dev/null']).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 2 });
    expect((err as { stderr: string }).stderr).toMatch(/unknown source "netstat" \(one of iptables, nft, ipvs, ipvs-conn, ipset, conntrack/);
  });

  it('says which file it cannot read', async () => {
    const err = await run(process.execPath, [cli, 'parse', 'conntrack', '/nonexistent/x']).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 2 });
    expect((err as { stderr: string }).stderr).toMatch(/cannot read \/nonexistent\/x/);
  });
});
