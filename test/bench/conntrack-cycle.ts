// `npm run bench`: the agent's full sample cycle against a real conntrack
// table. Fills a table in a network namespace of its own with `conntrack -R`
// (10k, then 100k entries), runs the cycle inside that namespace next to
// `cat /proc/net/nf_conntrack`, measures diff bytes at 1% churn against a full
// snapshot, and the agent's and collector's peak memory. Figures are ratios
// from one run on one machine. The agent runs with the environment the
// DaemonSet gives it. Needs root.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';

const sizes = (process.env.BENCH_SIZES ?? '10000,100000').split(',').map(Number);
const ns = `ctbench${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), 'conntrail-bench-'));
const sock = join(dir, 'collector.sock');
const node = process.execPath;
const root = new URL('../..', import.meta.url).pathname;

function sh(argv: string[], input?: string): string {
  return execFileSync(argv[0] ?? '', argv.slice(1), { encoding: 'utf8', input, maxBuffer: 1 << 30 });
}
function vmHwmKiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0);
}

/** The agent container's literal environment from the DaemonSet (NODE_OPTIONS, allocator settings): the bench measures the agent as deployed. */
function deployedEnv(): Record<string, string> {
  const docs = parseAllDocuments(readFileSync(join(root, 'manifests/agent.yaml'), 'utf8')).map((d) => d.toJS() as { kind?: string; spec?: { template?: { spec?: { containers?: { name: string; env?: { name: string; value?: string }[] }[] } } } });
  const agent = docs.find((d) => d.kind === 'DaemonSet')?.spec?.template?.spec?.containers?.find((c) => c.name === 'agent');
  if (agent === undefined) throw new Error('manifests/agent.yaml has no DaemonSet with an agent container');
  return Object.fromEntries((agent.env ?? []).flatMap((e) => (e.value === undefined ? [] : [[e.name, e.value]])));
}

/** Runs `conntrail agent` inside the namespace for `ms` and returns its peak resident memory. */
async function runAgentFor(ms: number): Promise<number> {
  // `ip netns exec` execs the command, so the child's pid is the agent's.
  const agent = spawn('ip', ['netns', 'exec', ns, node, join(root, 'bin/conntrail.js'), 'agent', '--collector', `ws+unix:${sock}`, '--node', 'bench'], {
    stdio: 'ignore',
    env: { ...process.env, LOG_LEVEL: 'warn', ...deployedEnv() },
  });
  let peak = 0;
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    try { peak = Math.max(peak, vmHwmKiB(agent.pid ?? 0)); } catch { break; }
  }
  agent.kill('SIGTERM');
  await new Promise((r) => agent.once('exit', r));
  return peak;
}

if (process.getuid?.() !== 0) {
  console.error('bench: needs root (it creates a network namespace and fills its conntrack table)');
  process.exit(2);
}

// As the image is built: a warm compile cache, so the agent measured is the one a node would run.
sh([node, join(root, 'scripts/warm-compile-cache.js')]);
const collector = spawn(node, [join(root, 'bin/conntrail.js'), 'collector', '--listen', `unix:${sock}`], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, LOG_LEVEL: 'warn' } });
try {
  sh(['ip', 'netns', 'add', ns]);
  // A namespace tracks nothing until a rule needs conntrack (LAB-NOTES).
  sh(['ip', 'netns', 'exec', ns, 'iptables', '-t', 'nat', '-A', 'POSTROUTING', '-j', 'ACCEPT']);
  const rows: Record<string, string | number>[] = [];
  for (const n of sizes) {
    sh(['ip', 'netns', 'exec', ns, 'conntrack', '-F'], undefined);
    const out = sh(['ip', 'netns', 'exec', ns, node, join(root, 'test/bench/cycle-inner.ts'), String(n), dir]);
    const r = JSON.parse(out.trim().split('\n').pop() ?? '{}') as Record<string, number>;
    // The real agent, in its own process, streams the same table to the real collector.
    r.agentHwmKiB = await runAgentFor(8_000);
    rows.push({
      entries: n,
      'cat alone ms': r.readMs ?? 0,
      'agent cycle ms': r.cycleMs ?? 0,
      'cycle / cat': Number(((r.cycleMs ?? 0) / (r.readMs ?? 1)).toFixed(2)),
      'first cycle ms (cold cache)': r.firstCycleMs ?? 0,
      'diff bytes @1% churn': r.diffBytes ?? 0,
      'snapshot bytes': r.snapshotBytes ?? 0,
      'diff / snapshot %': Number((((r.diffBytes ?? 0) / (r.snapshotBytes ?? 1)) * 100).toFixed(2)),
      'agent peak MB': Math.round((r.agentHwmKiB ?? 0) / 1024),
      'collector peak MB': Math.round(vmHwmKiB(collector.pid ?? 0) / 1024),
    });
  }
  console.table(rows);
  console.log('targets: cycle / cat <= 1.5; diff / snapshot <= 3%; agent <= 150 MB at 100k entries');
} finally {
  collector.kill('SIGTERM');
  try { sh(['ip', 'netns', 'del', ns]); } catch { /* already gone */ }
  rmSync(dir, { recursive: true, force: true });
}
