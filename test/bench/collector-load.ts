// `npm run bench`, collector part: a load generator against a real collector
// process (`node bin/conntrail.js collector`). For each size (10, 50, 200
// nodes by default) it starts a fresh collector, connects that many simulated
// agents over real WebSockets (test/bench/load-nodes.ts: 5,000 conntrack
// entries each, read by the project's parser from realistic lines, 1% churn
// a second), and measures:
//   - bytes per held record: the collector's RSS after every snapshot is
//     applied, less its RSS before any node connected, over the records held;
//   - RSS at the end of the churn, and its peak (VmHWM);
//   - CPU % of one core over the churn;
//   - lag: now − lastSampleTime from /api/nodes, the max over nodes and polls;
//   - /healthz latency, probed every 50 ms: p50/p99/max during ingest and
//     churn, and the max during a `GET /api/bundle?since=10m` at the end.
// The same generator runs against the commit before the compact store
// (`--before COMMIT`, checked out with `git worktree add` and removed after),
// so the table shows before and after from one run. `--duration 15m` is the
// issue's acceptance run. Figures are from one machine; the simulated nodes
// take a core of their own.
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { parseDuration } from '../../contract/duration.ts';

const root = new URL('../..', import.meta.url).pathname;
/** The last commit before the collector held records compactly (6099861's parent). */
const BEFORE = '32f7bdd';

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: process.env.BENCH_NODES ?? '10,50,200' },
    entries: { type: 'string', default: '5000' },
    churn: { type: 'string', default: '0.01' },
    duration: { type: 'string', default: process.env.BENCH_DURATION ?? '60s' },
    before: { type: 'string', default: process.env.BENCH_BEFORE ?? BEFORE },
    after: { type: 'string', default: process.env.BENCH_AFTER ?? '' },
    bundle: { type: 'boolean', default: true },
  },
});
const sizes = (values.sizes ?? '').split(',').map(Number).filter((n) => n > 0);
const entries = Number(values.entries);
const churn = Number(values.churn);
const parsedDuration = parseDuration(values.duration ?? '60s');
if (parsedDuration === null) throw new Error(`--duration: ${values.duration} is not a duration`);
const durationMs: number = parsedDuration;
const TOKEN = 'bench-token-0123456789abcdef';
const CLK_TCK = 100;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0));
    });
  });
}
function procStatus(pid: number, field: string): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const quantile = (xs: readonly number[], q: number): number => {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? 0;
};

interface NodeRow { node: string; lastSeq: number | null; lagMs: number | null }
interface Memory { rss: number; heapUsed: number; external: number; arrayBuffers: number }
async function nodes(base: string): Promise<{ nodes: NodeRow[]; bounds: string[]; memory: Memory | null; storePath: string | null }> {
  const res = await fetch(`${base}/api/nodes`, { headers: { Authorization: `Bearer ${TOKEN}` } });
  const body = (await res.json()) as { nodes: NodeRow[]; collector?: { memory?: Memory; bounds?: { bound?: string; name?: string }[]; store?: { path?: string } | null } };
  return { nodes: body.nodes, bounds: (body.collector?.bounds ?? []).map((b) => b.bound ?? b.name ?? JSON.stringify(b)), memory: body.collector?.memory ?? null, storePath: body.collector?.store?.path ?? null };
}
/** The store's file and its WAL on disk, as the collector's /api/nodes names it (commits before the store was listed: 0). */
function storeBytes(path: string | null): number {
  if (path === null) return 0;
  return ['', '-wal'].reduce((sum, suffix) => sum + (existsSync(path + suffix) ? statSync(path + suffix).size : 0), 0);
}

/**
 * /healthz every 50 ms; each answer's latency goes to the phase running when it was asked.
 * RSS is read every 100 ms on a timer of its own (a stalled collector must not hide its peak)
 * and the highest reading is kept per phase, so a peak over the limit names the phase that made it.
 */
function probe(base: string, pid: number): { phase: string; samples: Map<string, number[]>; peakRss: Map<string, number>; stop: () => void } {
  const state = { phase: 'idle', samples: new Map<string, number[]>(), peakRss: new Map<string, number>(), stop: () => {} };
  let running = true;
  const rssTimer = setInterval(() => {
    let rss = 0;
    try {
      rss = procStatus(pid, 'VmRSS');
    } catch {
      return;
    }
    state.peakRss.set(state.phase, Math.max(state.peakRss.get(state.phase) ?? 0, rss));
  }, 100);
  void (async () => {
    while (running) {
      const phase = state.phase;
      const t = performance.now();
      try {
        await fetch(`${base}/healthz`, { signal: AbortSignal.timeout(60_000) }).then((r) => r.arrayBuffer());
      } catch {
        /* a probe that fails counts at its full wait */
      }
      const ms = performance.now() - t;
      let list = state.samples.get(phase);
      if (list === undefined) state.samples.set(phase, (list = []));
      list.push(ms);
      await sleep(Math.max(0, 50 - ms));
    }
  })();
  state.stop = () => {
    running = false;
    clearInterval(rssTimer);
  };
  return state;
}

/** The collector container's memory settings (NODE_OPTIONS, MALLOC_*) from the Deployment in `dir` (a checkout or a worktree of the commit measured). */
function deployedCollectorEnv(dir: string): Record<string, string> {
  const path = join(dir, 'manifests/collector.yaml');
  if (!existsSync(path)) return {};
  type Doc = { kind?: string; spec?: { template?: { spec?: { containers?: { name: string; env?: { name: string; value?: string }[] }[] } } } };
  const docs = parseAllDocuments(readFileSync(path, 'utf8')).map((d) => d.toJS() as Doc);
  const c = docs.find((d) => d.kind === 'Deployment')?.spec?.template?.spec?.containers?.find((x) => x.name === 'collector');
  // Only what shapes memory: TMPDIR and the like name paths of the container, not of this machine.
  return Object.fromEntries((c?.env ?? []).flatMap((e) => (e.value === undefined || !/^(NODE_OPTIONS|MALLOC_)/.test(e.name) ? [] : [[e.name, e.value]])));
}

async function runOne(label: string, dir: string, n: number): Promise<Record<string, string | number>> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const collector = spawn(process.execPath, [join(dir, 'bin/conntrail.js'), 'collector', '--listen', `127.0.0.1:${port}`, '--no-kubernetes', '--capture', 'off'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    // As deployed: the Deployment's literal environment (NODE_OPTIONS caps V8's heap under the memory limit).
    env: { ...process.env, CONNTRAIL_TOKEN: TOKEN, LOG_LEVEL: 'warn', ...deployedCollectorEnv(dir) },
  });
  let gen: ChildProcess | null = null;
  try {
    const pid = collector.pid ?? 0;
    for (let i = 0; ; i++) {
      if (i > 200) throw new Error(`${label}: the collector did not answer /healthz`);
      try {
        if ((await fetch(`${base}/healthz`)).ok) break;
      } catch {
        /* not listening yet */
      }
      await sleep(100);
    }
    await sleep(1_000);
    const idleRss = procStatus(pid, 'VmRSS');
    const p = probe(base, pid);
    p.phase = 'ingest';
    const t0 = performance.now();
    // The simulated nodes run from this checkout: the protocol is the same on both sides of the comparison.
    gen = spawn(process.execPath, [join(root, 'test/bench/load-nodes.ts'), `ws://127.0.0.1:${port}`, TOKEN, String(n), String(entries), String(churn), '1'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const genOut = gen.stdout;
    let sent = false;
    genOut?.setEncoding('utf8');
    genOut?.on('data', (chunk: string) => {
      if (chunk.includes('snapshots-sent')) sent = true;
    });
    // Ingest is done when every node's snapshot is applied (its first seq) .
    for (;;) {
      if (performance.now() - t0 > 600_000) throw new Error(`${label}: ${n} nodes not ingested in 10 min`);
      await sleep(500);
      if (!sent) continue;
      const got = await nodes(base);
      if (got.nodes.length === n && got.nodes.every((x) => (x.lastSeq ?? 0) >= 1)) break;
    }
    const ingestS = (performance.now() - t0) / 1000;
    await sleep(1_000);
    const ingestRss = procStatus(pid, 'VmRSS');
    p.phase = 'churn';
    const c0 = cpuTicks(pid);
    const w0 = performance.now();
    let lagMax = 0;
    let bounds: string[] = [];
    let memory: Memory | null = null;
    let lastMinute = 0;
    let storePath: string | null = null;
    while (performance.now() - w0 < durationMs) {
      await sleep(Math.min(5_000, durationMs));
      const got = await nodes(base);
      for (const x of got.nodes) lagMax = Math.max(lagMax, x.lagMs ?? Number.POSITIVE_INFINITY);
      bounds = got.bounds;
      memory = got.memory;
      storePath = got.storePath;
      // A line a minute on stderr on long runs: whether RSS levels off or keeps climbing is what the end figure cannot say.
      const minute = Math.floor((performance.now() - w0) / 60_000);
      if (durationMs > 120_000 && minute > lastMinute) {
        lastMinute = minute;
        const lag = Math.max(0, ...got.nodes.map((x) => x.lagMs ?? Number.POSITIVE_INFINITY));
        process.stderr.write(`collector-load: ${n} nodes, churn ${minute} min: RSS ${Math.round(procStatus(pid, 'VmRSS') / 2 ** 20)} MB, heap ${Math.round((got.memory?.heapUsed ?? 0) / 2 ** 20)} MB, external ${Math.round((got.memory?.external ?? 0) / 2 ** 20)} MB, lag ${(lag / 1000).toFixed(2)} s\n`);
      }
    }
    const cpuPct = ((cpuTicks(pid) - c0) / CLK_TCK / ((performance.now() - w0) / 1000)) * 100;
    const endRss = procStatus(pid, 'VmRSS');
    const endStore = storeBytes(storePath);
    let bundleS = Number.NaN;
    let bundleMB = 0;
    if (values.bundle) {
      p.phase = 'bundle';
      const b0 = performance.now();
      try {
        const res = await fetch(`${base}/api/bundle?since=10m`, { headers: { Authorization: `Bearer ${TOKEN}` }, signal: AbortSignal.timeout(1_200_000) });
        bundleMB = (await res.arrayBuffer()).byteLength / 2 ** 20;
        bundleS = (performance.now() - b0) / 1000;
      } catch {
        bundleS = Number.POSITIVE_INFINITY;
      }
    }
    p.phase = 'done';
    p.stop();
    const live = [...(p.samples.get('ingest') ?? []), ...(p.samples.get('churn') ?? [])];
    const records = n * entries;
    return {
      collector: label,
      nodes: n,
      records,
      'ingest s': Number(ingestS.toFixed(1)),
      'B/record': Math.round((ingestRss - idleRss) / records),
      'RSS ingest MB': Math.round(ingestRss / 2 ** 20),
      'RSS end MB': Math.round(endRss / 2 ** 20),
      'peak MB': Math.round(procStatus(pid, 'VmHWM') / 2 ** 20),
      'peak ingest MB': Math.round((p.peakRss.get('ingest') ?? 0) / 2 ** 20),
      'peak churn MB': Math.round((p.peakRss.get('churn') ?? 0) / 2 ** 20),
      'peak bundle MB': Math.round((p.peakRss.get('bundle') ?? 0) / 2 ** 20),
      // Where the end RSS is, as the collector itself reports it (process.memoryUsage in /api/nodes).
      'heap MB end': Math.round((memory?.heapUsed ?? 0) / 2 ** 20),
      'external MB end': Math.round((memory?.external ?? 0) / 2 ** 20),
      'store MB end': Math.round(endStore / 2 ** 20),
      'CPU %': Math.round(cpuPct),
      'lag max s': Number((lagMax / 1000).toFixed(2)),
      'healthz p50 ms': Number(quantile(live, 0.5).toFixed(1)),
      'healthz p99 ms': Math.round(quantile(live, 0.99)),
      'healthz max ms': Math.round(Math.max(0, ...live)),
      'bundle s': Number(bundleS.toFixed(1)),
      'bundle MB': Number(bundleMB.toFixed(1)),
      'healthz max in bundle ms': Math.round(Math.max(0, ...(p.samples.get('bundle') ?? []))),
      'bounds hit': bounds.join(' ') || '-',
    };
  } finally {
    gen?.kill('SIGTERM');
    collector.kill('SIGKILL');
    await new Promise((r) => (collector.exitCode !== null ? r(null) : collector.once('exit', r)));
  }
}

/** A checkout of `commit` in a temporary worktree, sharing this checkout's node_modules. */
function worktree(commit: string): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), `conntrail-bench-${commit.slice(0, 8)}-`));
  rmSync(dir, { recursive: true });
  execFileSync('git', ['-C', root, 'worktree', 'add', '--detach', dir, commit], { stdio: 'ignore' });
  if (!existsSync(join(dir, 'node_modules'))) symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  return {
    dir,
    remove: () => {
      execFileSync('git', ['-C', root, 'worktree', 'remove', '--force', dir], { stdio: 'ignore' });
    },
  };
}

const trees: { label: string; dir: string; remove: () => void }[] = [];
try {
  if (values.before !== 'none' && values.before !== '') trees.push({ label: `before (${values.before})`, ...worktree(values.before ?? BEFORE) });
  if (values.after !== '') trees.push({ label: `after (${values.after})`, ...worktree(values.after ?? 'HEAD') });
  else trees.push({ label: 'this checkout', dir: root, remove: () => {} });
  const rows: Record<string, string | number>[] = [];
  for (const n of sizes)
    for (const t of trees) {
      process.stderr.write(`collector-load: ${t.label}, ${n} nodes × ${entries} entries, ${Math.round(durationMs / 1000)} s of churn\n`);
      try {
        rows.push(await runOne(t.label, t.dir, n));
      } catch (err) {
        rows.push({ collector: t.label, nodes: n, failed: String(err instanceof Error ? err.message : err) });
      }
    }
  console.table(rows);
  console.log(`targets: B/record <= 300 (conntrack held), RSS under the Deployment's 1 GiB, lag < 2 s, /healthz never stalled (max ms)`);
} finally {
  for (const t of trees) t.remove();
}
