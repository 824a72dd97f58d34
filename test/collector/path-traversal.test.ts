// A node name is the agent's to choose, and it once went straight into bundle
// paths: a hello as `../../../x/pwned` then `GET /api/bundle` wrote files
// outside the bundle's temp dir. Now such a hello is refused at decode, and
// bundle entries are made from a fixed list of names with validated parts.
// Against a real collector process whose cwd and TMPDIR are watched.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import * as tar from 'tar';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConntrack } from '../../agent/sources/conntrack.ts';
import { bundleFiles, isBundleEntry, packBundle } from '../../collector/incidents/bundle.ts';
import { waitFor } from '../helpers/capture-log.ts';
import { RawWs, startCollectorProcess, type CollectorProcess } from '../helpers/collector-process.ts';

const EVIL = ['../../../x/pwned', '../../../../../../tmp/conntrail-pwned', 'a/b', '..', '.', '%2e%2e', '..%2f..%2fx', 'x'.repeat(300), 'nöde-ü', 'node\u202egpj', 'UPPER', 'a\\b', '/abs', 'a\u0000b', '', ' ', 'a..b/../c'];
const CONNTRACK = 'ipv4     2 tcp      6 119 SYN_SENT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 [UNREPLIED] src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 mark=0 zone=0 use=2';
const records = parseConntrack(CONNTRACK).records;

/** Every path under `dir`, with its size: what "no file was created" is checked against. */
function tree(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      // The collector's own history store (a temporary file without --data-dir) is there before and after, and grows as nodes stream.
      if (name.startsWith('conntrail-history-')) continue;
      const full = join(d, name);
      const st = statSync(full);
      out.push(`${relative(dir, full)}${st.isDirectory() ? '/' : ` ${st.size}`}`);
      if (st.isDirectory()) walk(full);
    }
  };
  walk(dir);
  return out.sort();
}

describe('a hostile node name never becomes a path', { timeout: 30_000 }, () => {
  let proc: CollectorProcess;
  let out: string;
  beforeAll(async () => {
    proc = await startCollectorProcess({ token: 'traversal-token' });
    out = mkdtempSync(join(tmpdir(), 'conntrail-traversal-out-'));
  });
  afterAll(async () => {
    await proc.stop();
    rmSync(out, { recursive: true, force: true });
  });

  it('refuses each evil name at hello, and the bundle holds only entries from its list; nothing lands in the cwd or TMPDIR', async () => {
    const before = tree(proc.dir);
    const tmpParentBefore = readdirSync(tmpdir()).filter((n) => n.includes('pwned'));
    const now = Date.now();
    for (const node of EVIL) {
      const ws = await RawWs.open(proc.port, proc.token);
      if (!(ws instanceof RawWs)) throw new Error(`refused ${ws.refused}`);
      const rejectedBefore = proc.lines.filter((l) => l.msg === 'rejected a frame (malformed)').length;
      ws.json({ v: 1, type: 'hello', node, agentVersion: 'evil', intervalMs: 1000, startedAt: now });
      ws.json({ v: 1, type: 'snapshot', seq: 1, time: now, source: 'conntrack', part: 0, parts: 1, records });
      ws.json({ v: 1, type: 'snapshot-end', seq: 1, time: now, status: [] });
      await waitFor(`the refusal of ${JSON.stringify(node.slice(0, 40))}`, () => proc.lines.filter((l) => l.msg === 'rejected a frame (malformed)').length > rejectedBefore);
      const refusal = proc.lines.filter((l) => l.msg === 'rejected a frame (malformed)').at(-1);
      expect(refusal).toMatchObject({ node: null, error: expect.stringMatching(/^node: not a Kubernetes node name/) });
      ws.end();
    }
    // A legit node, so the bundle has a timeline to write.
    const legit = await RawWs.open(proc.port, proc.token);
    if (!(legit instanceof RawWs)) throw new Error(`refused ${legit.refused}`);
    legit.json({ v: 1, type: 'hello', node: 'legit-node', agentVersion: 'test', intervalMs: 1000, startedAt: now });
    legit.json({ v: 1, type: 'snapshot', seq: 1, time: now, source: 'conntrack', part: 0, parts: 1, records });
    legit.json({ v: 1, type: 'snapshot-end', seq: 1, time: now, status: [] });
    await waitFor('the legit snapshot', () => proc.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'legit-node'));

    const headers = { authorization: `Bearer ${proc.token}` };
    const nodes = (await (await fetch(`http://127.0.0.1:${proc.port}/api/nodes`, { headers })).json()) as { nodes: { node: string }[]; collector: { rejectedFrames: Record<string, number> } };
    expect(nodes.nodes.map((n) => n.node)).toEqual(['legit-node']);
    // Each evil hello was refused, and its snapshot frames after it came "before hello".
    expect(nodes.collector.rejectedFrames).toMatchObject({ malformed: EVIL.length, 'before-hello': EVIL.length * 2 });

    const res = await fetch(`http://127.0.0.1:${proc.port}/api/bundle?since=10m`, { headers });
    expect(res.status).toBe(200);
    const file = join(out, 'bundle.tar.gz');
    writeFileSync(file, Buffer.from(await res.arrayBuffer()));
    const entries: string[] = [];
    await tar.t({ file, onReadEntry: (e) => void entries.push(e.path) });
    const unpacked = join(out, 'unpacked');
    mkdirSync(unpacked);
    await tar.x({ file, cwd: unpacked, strict: true });

    const prefix = entries[0]?.split('/')[0] ?? '';
    expect(prefix).toMatch(/^conntrail-\d{8}T\d{9}Z$/);
    const files = entries.filter((e) => !e.endsWith('/')).map((e) => e.slice(prefix.length + 1));
    for (const f of files) expect(isBundleEntry(f), f).toBe(true);
    expect(files.sort()).toEqual(['endpoints.jsonl', 'findings.jsonl', 'manifest.json', 'nodes/legit-node.json', 'report.html', 'snapshots/legit-node/conntrack.txt', 'summary.md', 'timeline/legit-node.jsonl']);
    // Unpacked, everything is under the one prefix.
    expect(readdirSync(unpacked)).toEqual([prefix]);

    // The collector's cwd and TMPDIR are as they were: the bundle's temp dir is gone, nothing else appeared.
    expect(tree(proc.dir)).toEqual(before);
    expect(readdirSync(join(proc.dir, 'tmp')).filter((n) => !n.startsWith('conntrail-history-'))).toEqual([]);
    expect(readdirSync(tmpdir()).filter((n) => n.includes('pwned'))).toEqual(tmpParentBefore);
    expect(proc.exited()).toBe(false);
    legit.end();
  });
});

describe('bundle entries come from a fixed list', () => {
  it('leaves out a timeline or a capture under a name that is not a node name, and says so in the manifest', () => {
    const time = Date.now();
    const timeline = (node: string) => ({ node, facts: null, entries: [{ seq: 1, time, kind: 'snapshot' as const, changes: [{ source: 'conntrack' as const, added: records, removed: [], changed: [], refreshed: [] }] }] });
    const files = bundleFiles({
      from: time - 60_000,
      to: time + 1,
      timelines: [timeline('../../../x/pwned'), timeline('good-node')],
      incident: null,
      version: 'test',
      captures: new Map([['../evil', new Map([['tcpdump', { lines: ['x'], ended: true, error: null }]])], ['good-node', new Map([['../../tool', { lines: ['x'], ended: true, error: null }]])]]),
      pcaps: new Map([['a/b', Buffer.from('pcap')]]),
    });
    for (const p of files.keys()) expect(isBundleEntry(p), p).toBe(true);
    expect([...files.keys()].filter((p) => p.includes('good-node')).sort()).toEqual(['nodes/good-node.json', 'snapshots/good-node/conntrack.txt', 'timeline/good-node.jsonl']);
    const manifest = JSON.parse(String(files.get('manifest.json'))) as { nodes: string[]; skipped: string[] };
    expect(manifest.nodes).toEqual(['good-node']);
    expect(manifest.skipped).toHaveLength(4);
    expect(manifest.skipped[0]).toMatch(/pwned.*not a node name/);
  });

  it('packBundle refuses, before writing anything, a path that is not a bundle entry', async () => {
    await expect(packBundle(new Map([['../../x/pwned.jsonl', 'owned']]), 'conntrail-test')).rejects.toThrow(/is not a bundle entry name/);
    await expect(packBundle(new Map([['timeline/UPPER.jsonl', 'x']]), 'conntrail-test')).rejects.toThrow(/is not a bundle entry name/);
    await expect(packBundle(new Map([['summary.md', 'ok']]), 'conntrail-../../x')).rejects.toThrow(/is not a bundle name/);
  });
});
