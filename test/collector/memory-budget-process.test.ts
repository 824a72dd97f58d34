// A real collector process under load stays under its --memory-budget: 20
// agents speaking the real protocol with 5,000 conntrack entries each at 5%
// churn a second (the bench's load generator), RSS read from /proc while
// they stream. History lives in the store, so the heap holds live state and
// a few seconds; the budget is what an operator sets from the container limit.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';

const CLI = new URL('../../bin/conntrail.js', import.meta.url).pathname;
const LOAD = new URL('../bench/load-nodes.ts', import.meta.url).pathname;
const TOKEN = 'budget-test-token-0123456789';
const BUDGET_MB = 400;
/** What the collector suggests for that budget (bin/cli.ts suggestedOldSpaceMb): V8's whole heap limit within four fifths of it. */
const OLD_SPACE_MB = Math.floor(BUDGET_MB * 0.8) - 192;
const children: ChildProcess[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

const freePort = () =>
  new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0));
    });
  });
const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('the collector under load', { timeout: 120_000 }, () => {
  it(`keeps its RSS under --memory-budget ${BUDGET_MB}Mi while 20 nodes × 5,000 entries stream at 5% churn, and every node's records are whole`, async () => {
    const port = await freePort();
    const collector = spawn(process.execPath, [CLI, 'collector', '--listen', `127.0.0.1:${port}`, '--no-kubernetes', '--capture', 'off', '--memory-budget', `${BUDGET_MB}Mi`], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, CONNTRAIL_TOKEN: TOKEN, LOG_LEVEL: 'warn', NODE_OPTIONS: `--max-old-space-size=${OLD_SPACE_MB}` },
    });
    children.push(collector);
    const api = async (path: string) => (await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } })).json() as Promise<{ nodes: { node: string; connected: boolean; sources: { source: string; records: number }[] }[]; collector: { bounds: { bound: string }[] } }>;
    for (let i = 0; ; i++) {
      expect(i, 'the collector never answered /healthz').toBeLessThan(100);
      if (await fetch(`http://127.0.0.1:${port}/healthz`).then((r) => r.ok, () => false)) break;
      await sleep(100);
    }
    const load = spawn(process.execPath, [LOAD, `ws://127.0.0.1:${port}`, TOKEN, '20', '5000', '0.05', '7'], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(load);
    let peak = 0;
    const deadline = Date.now() + 40_000;
    while (Date.now() < deadline) {
      peak = Math.max(peak, rssMb(collector.pid ?? 0));
      await sleep(200);
    }
    const state = await api('/api/nodes');
    expect(state.nodes.filter((n) => n.connected)).toHaveLength(20);
    for (const n of state.nodes) expect(n.sources.find((s) => s.source === 'conntrack')?.records, n.node).toBeGreaterThan(4_000);
    expect(peak).toBeGreaterThan(0);
    expect(peak, `peak RSS ${Math.round(peak)} MB`).toBeLessThan(BUDGET_MB);
  });

  it.each([
    ['without a heap cap it says V8 may outgrow the budget, and how to cap it', '', true],
    ['with the cap it suggests it says nothing', `--max-old-space-size=${OLD_SPACE_MB}`, false],
  ])('%s', async (_name, nodeOptions, warns) => {
    const port = await freePort();
    const collector = spawn(process.execPath, [CLI, 'collector', '--listen', `127.0.0.1:${port}`, '--no-kubernetes', '--memory-budget', `${BUDGET_MB}Mi`], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CONNTRAIL_TOKEN: TOKEN, NODE_OPTIONS: nodeOptions },
    });
    children.push(collector);
    let out = '';
    collector.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 20_000;
    while (!out.includes('collector listening') && Date.now() < deadline) await sleep(100);
    await sleep(300);
    expect(out, 'the collector never said it was listening').toContain('collector listening');
    const line = out.split('\n').find((l) => l.includes("V8's heap may grow past the memory budget"));
    if (!warns) {
      expect(line).toBeUndefined();
      return;
    }
    expect(JSON.parse(line ?? '{}')).toMatchObject({ level: 40, memoryBudgetMB: BUDGET_MB, suggest: `NODE_OPTIONS=--max-old-space-size=${OLD_SPACE_MB}` });
  });
});
