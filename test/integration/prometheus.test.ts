// conntrail's metrics and alerts against a real Prometheus (Debian's
// `prometheus` package, installed by npm run setup): a real `conntrail
// collector` process, a real `conntrail agent` process sampling this host,
// and seed 002's recorded rollout streamed to the collector by the agent's
// own code over the wire protocol, so the collector logs a real finding.
// Prometheus (its own process, temp config and data dir, a free port)
// scrapes the collector's /metrics with the token, its --metrics-listen
// listener without one, and the agent's health port; its HTTP API must then
// answer for the finding with the right labels, and evaluate the alert
// rules of manifests/monitoring/ to a firing ConntrailErrorFinding. promtool
// checks the rule file and runs its unit tests.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { parseSysctl } from '../../agent/sources/sysctl.ts';
import { readTimeline, RECORDED_FILES } from '../../bin/replay.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { captureLog, collectJsonLines, waitFor } from '../helpers/capture-log.ts';
import { startCollectorProcess, type CollectorProcess } from '../helpers/collector-process.ts';
import { nodeBinary } from '../lab/traffic.ts';
import { cli } from './harness.ts';

const root = new URL('../..', import.meta.url).pathname;
const MONITORING = join(root, 'manifests/monitoring');
const SEED_002 = join(root, 'test/fixtures/timelines/seed-002-reuse-to-removed-endpoint');
const SEED_NODE = 'cn-beijing.10.20.79.226';
const HOST_NODE = 'prom-host';
const FINDING = { kind: 'port-reuse-to-removed-endpoint', severity: 'error', node: SEED_NODE, service: 'TCP 10.20.79.226:31199' };

/** The binary on PATH (or in Debian's /usr/bin, /usr/sbin); a missing one fails the test, named. */
function requireBinary(name: string): string {
  for (const dir of [...(process.env.PATH ?? '').split(delimiter), '/usr/bin', '/usr/sbin']) {
    const path = join(dir, name);
    try {
      accessSync(path, constants.X_OK);
      return path;
    } catch {
      // not in this directory
    }
  }
  throw new Error(`${name} not installed: run npm run setup (it installs Debian's prometheus package, which has prometheus and promtool)`);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      s.close(() => (typeof addr === 'object' && addr !== null ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/** What the replay reads for a step's recorded files (bin/replay.ts's mapping): commands, procfs paths, and each sysctl as its /proc/sys file. */
function recordingOf(files: ReadonlyMap<string, string>): Map<string, string> {
  const rec = new Map<string, string>();
  for (const [f, text] of files) {
    const key = RECORDED_FILES[f];
    if (key !== undefined) rec.set(key, text);
  }
  const sysctl = files.get('sysctl.txt');
  if (sysctl !== undefined) for (const s of parseSysctl(sysctl).records) rec.set(`/proc/sys/${s.name.split('.').join('/')}`, `${s.value}\n`);
  return rec;
}

interface PromVector {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

let dir: string;
let collector: CollectorProcess;
let metricsPort: number;
let agentProcess: ChildProcess | null = null;
const agentLines: Record<string, unknown>[] = [];
let healthPort: number;
let replayAgent: Agent | null = null;
let prometheus: ChildProcess | null = null;
let prometheusOut = '';
let promPort: number;

async function query(expr: string): Promise<PromVector[]> {
  const res = await fetch(`http://127.0.0.1:${promPort}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: PromVector[] } };
  if (body.status !== 'success') throw new Error(`PromQL ${expr}: ${body.error ?? res.status}`);
  return body.data?.result ?? [];
}

async function nodeSeq(node: string): Promise<number | null> {
  const res = await fetch(`http://127.0.0.1:${collector.port}/api/nodes`, { headers: { authorization: `Bearer ${collector.token}` } });
  const body = (await res.json()) as { nodes: { node: string; lastSeq: number | null }[] };
  return body.nodes.find((n) => n.node === node)?.lastSeq ?? null;
}

function stop(child: ChildProcess | null): Promise<void> {
  if (child === null || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  return exited.finally(() => clearTimeout(timer));
}

beforeAll(async () => {
  const prometheusBin = requireBinary('prometheus');
  dir = mkdtempSync(join(tmpdir(), 'conntrail-prometheus-'));
  collector = await startCollectorProcess({ token: 'prom-token', args: ['--capture', 'off', '--metrics-listen', '127.0.0.1:0'] });
  const listening = await waitFor('the metrics listener', () => collector.lines.find((l) => l.msg === 'metrics listening (GET /metrics, no token)'), 10_000);
  metricsPort = (listening.listen as { port: number }).port;
  const tokenFile = join(collector.dir, 'token');

  // A real agent process on this host: its health port serves the agent's metrics.
  agentProcess = spawn(nodeBinary(), [cli, 'agent', '--collector', `ws://127.0.0.1:${collector.port}`, '--node', HOST_NODE, '--interval', '1s', '--token-file', tokenFile, '--health-listen', '127.0.0.1:0'], {
    env: { ...process.env, CONNTRAIL_TOKEN: '' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  collectJsonLines(agentProcess.stdout, agentLines);
  const health = await waitFor('the agent health port', () => agentLines.find((l) => l.msg === 'health endpoints listening (/livez, /readyz, /metrics)'), 15_000);
  healthPort = (health.health as { port: number }).port;
  await waitFor('the host agent snapshot', () => collector.lines.find((l) => l.msg === 'snapshot applied' && l.node === HOST_NODE), 30_000);

  // Seed 002's rollout, step by step, sampled and sent by the agent's code over the socket at today's times.
  const steps = readTimeline(SEED_002).get(SEED_NODE) ?? [];
  const carried = new Map<string, string>();
  const facts: NodeFacts = { hostname: SEED_NODE, kernel: '4.19.91-19.1.al7.x86_64', os: 'recorded', arch: 'x64', cpus: 2, memoryBytes: 1, interfaces: [] };
  replayAgent = new Agent({ node: SEED_NODE, collectorUrl: `ws://127.0.0.1:${collector.port}`, intervalMs: 200, token: collector.token, version: 'test', state: new NodeState(createSamplers(), createRecordedIO(() => recordingOf(carried))), log: captureLog().log, readFacts: () => Promise.resolve(facts), journal: { maxAgeMs: 0, maxBytes: 0 } });
  for (const [i, step] of steps.entries()) {
    for (const [f, t] of step.files) carried.set(f, t);
    const before = (await nodeSeq(SEED_NODE)) ?? 0;
    if (i === 0) replayAgent.start();
    // Two applied ticks past the change: one sampled it whole.
    await waitFor(`seed 002 step ${i} at the collector`, async () => ((await nodeSeq(SEED_NODE)) ?? -1) >= before + 2, 10_000);
  }
  await waitFor('the finding in the collector log', () => collector.lines.find((l) => l.finding === FINDING.kind && l.node === SEED_NODE), 10_000);

  // Prometheus: scrapes every second, evaluates the shipped alert rules every second.
  promPort = await freePort();
  const config = join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    [
      'global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }',
      `rule_files: [${JSON.stringify(join(MONITORING, 'alerts.yaml'))}]`,
      'scrape_configs:',
      '  - job_name: collector',
      `    authorization: { type: Bearer, credentials_file: ${JSON.stringify(tokenFile)} }`,
      `    static_configs: [{ targets: ["127.0.0.1:${collector.port}"] }]`,
      '  - job_name: collector-metrics-listen',
      `    static_configs: [{ targets: ["127.0.0.1:${metricsPort}"] }]`,
      '  - job_name: agent',
      `    static_configs: [{ targets: ["127.0.0.1:${healthPort}"] }]`,
      '',
    ].join('\n'),
  );
  prometheus = spawn(prometheusBin, [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  prometheus.stdout?.on('data', (d: Buffer) => (prometheusOut += d.toString()));
  prometheus.stderr?.on('data', (d: Buffer) => (prometheusOut += d.toString()));
  const started = prometheus;
  await waitFor(
    'prometheus ready',
    async () => {
      if (started.exitCode !== null) throw new Error(`prometheus exited ${started.exitCode}: ${prometheusOut.slice(-2000)}`);
      return fetch(`http://127.0.0.1:${promPort}/-/ready`).then((r) => r.ok, () => false);
    },
    30_000,
  );
}, 120_000);

afterAll(async () => {
  // For the README's "Metrics and alerts": the real text each endpoint served, written only when asked for.
  const dump = process.env.CONNTRAIL_METRICS_DUMP;
  if (dump && healthPort) {
    const scrape = async (url: string, headers: Record<string, string> = {}) => `# GET ${url.replace(/127\.0\.0\.1:\d+/, '…')}\n${await (await fetch(url, { headers })).text()}`;
    writeFileSync(dump, [await scrape(`http://127.0.0.1:${collector.port}/metrics`, { authorization: `Bearer ${collector.token}` }), await scrape(`http://127.0.0.1:${healthPort}/metrics`)].join('\n'));
  }
  await stop(prometheus);
  await replayAgent?.stop();
  await stop(agentProcess);
  await collector?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('real Prometheus against a live collector and agent', { timeout: 60_000 }, () => {
  it('scrapes the collector with its token, its --metrics-listen listener without one, and the agent', async () => {
    const targets = await waitFor(
      'every target up',
      async () => {
        const res = (await (await fetch(`http://127.0.0.1:${promPort}/api/v1/targets`)).json()) as { data: { activeTargets: { labels: { job: string }; health: string; lastError: string }[] } };
        const t = res.data.activeTargets;
        return t.length === 3 && t.every((x) => x.health === 'up') ? t : null;
      },
      20_000,
    );
    expect(targets.map((t) => t.labels.job).sort()).toEqual(['agent', 'collector', 'collector-metrics-listen']);
  });

  it('answers conntrail_findings_total with the finding, labelled by kind, severity, node and Service, from both collector endpoints', async () => {
    const series = await waitFor(
      'the findings series from both jobs',
      async () => {
        const r = await query('conntrail_findings_total');
        return r.length === 2 ? r : null;
      },
      20_000,
    );
    const seen = series.map((s) => ({ job: s.metric.job, kind: s.metric.kind, severity: s.metric.severity, node: s.metric.node, service: s.metric.service, value: s.value[1] })).sort((a, b) => String(a.job).localeCompare(String(b.job)));
    expect(seen).toEqual([
      { job: 'collector', ...FINDING, value: '1' },
      { job: 'collector-metrics-listen', ...FINDING, value: '1' },
    ]);
    // The line the collector logged is the one counted.
    const logged = collector.lines.filter((l) => l.finding !== undefined);
    expect(logged.map((l) => [l.finding, l.severity, l.node, l.service, l.count])).toEqual([[FINDING.kind, FINDING.severity, FINDING.node, FINDING.service, 1]]);
  });

  it('answers for both nodes and the agent process: connected, sources read, sample durations, frames sent', async () => {
    const connected = await waitFor('both nodes connected', async () => {
      const r = await query('conntrail_node_connected{job="collector"}');
      return r.length === 2 ? r : null;
    }, 10_000);
    expect(Object.fromEntries(connected.map((s) => [s.metric.node, s.value[1]]))).toEqual({ [HOST_NODE]: '1', [SEED_NODE]: '1' });
    const ipvsConn = await query(`conntrail_node_records{job="collector",node="${SEED_NODE}",source="ipvs-conn"}`);
    expect(ipvsConn.map((s) => s.value[1])).toEqual(['1']);
    const lag = await query(`conntrail_node_lag_seconds{job="collector",node="${HOST_NODE}"}`);
    expect(Number(lag[0]?.value[1])).toBeLessThan(10);
    // The host agent's own metrics: every source it read this host for has a duration histogram.
    const ok = (await query('conntrail_agent_source_state{job="agent",state="ok"} == 1')).map((s) => s.metric.source).sort();
    expect(ok).toContain('conntrack');
    const durations = (await query('conntrail_agent_sample_duration_seconds_count{job="agent"} > 0')).map((s) => s.metric.source).sort();
    expect(durations).toEqual(ok);
    const frames = await query('conntrail_agent_sent_frames_total{job="agent"}');
    expect(Number(frames[0]?.value[1])).toBeGreaterThan(3);
    const bytes = await query('conntrail_agent_sent_bytes_total{job="agent"}');
    expect(Number(bytes[0]?.value[1])).toBeGreaterThan(Number(frames[0]?.value[1]));
    expect((await query('process_resident_memory_bytes{job="agent"}')).length).toBe(1);
  });

  it('evaluates the shipped alert rules to a firing ConntrailErrorFinding for that finding, and no other alert', async () => {
    const firing = await waitFor(
      'ConntrailErrorFinding firing',
      async () => {
        const r = await query('ALERTS{alertstate="firing"}');
        return r.length > 0 ? r : null;
      },
      20_000,
    );
    expect(firing.map((a) => ({ alertname: a.metric.alertname, severity: a.metric.severity, kind: a.metric.kind, node: a.metric.node, service: a.metric.service }))).toEqual([
      { alertname: 'ConntrailErrorFinding', severity: 'critical', kind: FINDING.kind, node: FINDING.node, service: FINDING.service },
    ]);
  });

  it("evaluates every query of the Grafana dashboard; the findings panels show the finding's kind and Service", async () => {
    const dashboard = JSON.parse(readFileSync(join(MONITORING, 'dashboard.json'), 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
    const results = new Map<string, PromVector[]>();
    for (const p of dashboard.panels) for (const t of p.targets) results.set(p.title, [...(results.get(p.title) ?? []), ...(await query(t.expr))]);
    // Both collector jobs scrape the same collector here, so the panels' sums count the finding twice.
    expect(results.get('Findings by kind')?.map((s) => [s.metric.kind, s.value[1]])).toEqual([[FINDING.kind, '2']]);
    expect(results.get('Findings by Service')?.map((s) => [s.metric.service, s.value[1]])).toEqual([[FINDING.service, '2']]);
    expect(results.get('Sample lag per node')?.map((s) => s.metric.node).sort()).toEqual([HOST_NODE, SEED_NODE].sort());
    expect(results.get('Error findings, last 5 min')?.map((s) => s.value[1])).toEqual(['1']);
  });
});

describe('promtool on manifests/monitoring/alerts.yaml', () => {
  it('checks the rules and passes their unit tests (alerts.test.yaml)', () => {
    const promtool = requireBinary('promtool');
    expect(execFileSync(promtool, ['check', 'rules', join(MONITORING, 'alerts.yaml')], { encoding: 'utf8' })).toContain('SUCCESS: 3 rules found');
    const tested = spawnSync(promtool, ['test', 'rules', join(MONITORING, 'alerts.test.yaml')], { encoding: 'utf8' });
    expect(`${tested.stdout}${tested.stderr}`).toContain('SUCCESS');
    expect(tested.status).toBe(0);
  });

  it('fails a unit test that expects the findings alert after its 5 minutes (so the passing tests above can fail)', () => {
    const promtool = requireBinary('promtool');
    const wrong = mkdtempSync(join(tmpdir(), 'conntrail-promtool-'));
    try {
      writeFileSync(join(wrong, 'alerts.yaml'), readFileSync(join(MONITORING, 'alerts.yaml')));
      writeFileSync(
        join(wrong, 'late.test.yaml'),
        [
          'rule_files: [alerts.yaml]',
          'evaluation_interval: 15s',
          'tests:',
          '  - interval: 15s',
          '    input_series:',
          `      - series: 'conntrail_finding_last_seen_timestamp_seconds{kind="lb-hairpin",severity="error",node="node-1",service="shop/web:http"}'`,
          "        values: '60x40'",
          '    alert_rule_test:',
          '      - eval_time: 7m',
          '        alertname: ConntrailErrorFinding',
          '        exp_alerts: [{ exp_labels: { severity: critical, kind: lb-hairpin, node: node-1, service: "shop/web:http" } }]',
          '',
        ].join('\n'),
      );
      const r = spawnSync(promtool, ['test', 'rules', join(wrong, 'late.test.yaml')], { encoding: 'utf8' });
      expect(r.status).not.toBe(0);
      expect(`${r.stdout}${r.stderr}`).toContain('FAILED');
    } finally {
      rmSync(wrong, { recursive: true, force: true });
    }
  });
});
