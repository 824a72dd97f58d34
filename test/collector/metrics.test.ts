// The collector's and the agent's Prometheus metrics as a scraper reads them:
// the exposition text over HTTP, parsed here line by line. The finding lines
// are those a replay of seed 002 logs; node state comes from a real agent
// streaming recorded outputs over the WebSocket.
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Agent } from '../../agent/agent.ts';
import { startHealthServer } from '../../agent/health.ts';
import { AgentMetrics } from '../../agent/metrics.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { replay } from '../../bin/replay.ts';
import { CollectorMetrics, startMetricsListener } from '../../collector/api/metrics.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import type { FindingLine } from '../../collector/detection/aggregate.ts';
import { Collector } from '../../collector/receive/collector.ts';
import { SUBPROTOCOL } from '../../contract/protocol.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';

const SEED_002 = new URL('../fixtures/timelines/seed-002-reuse-to-removed-endpoint', import.meta.url).pathname;
const TIME_WAIT =
  'ipv4     2 tcp      6 60 TIME_WAIT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 [ASSURED] mark=0 zone=0 use=2';
const OTHER =
  'ipv4     2 tcp      6 107 SYN_SENT src=10.27.2.92 dst=10.27.1.245 sport=37912 dport=18080 [UNREPLIED] src=10.27.1.245 dst=10.27.2.92 sport=18080 dport=37912 mark=0 zone=0 use=2';
const facts: NodeFacts = { hostname: 'node-a', kernel: '4.19.91', os: 'test', arch: 'x64', cpus: 2, memoryBytes: 1, interfaces: [] };

interface Sample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

/** The samples of a text exposition (comments skipped); label values unescaped as the format escapes them. */
function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`not an exposition line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1] ?? ''] = (l[2] ?? '').replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
    out.push({ name: m[1] ?? '', labels, value: Number(m[3]) });
  }
  return out;
}

const pick = (samples: readonly Sample[], name: string, labels: Record<string, string> = {}): Sample[] =>
  samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));

async function scrape(url: string, token: string | null = null): Promise<{ status: number; type: string | null; samples: Sample[] }> {
  const res = await fetch(url, token === null ? {} : { headers: { authorization: `Bearer ${token}` } });
  const text = await res.text();
  return { status: res.status, type: res.headers.get('content-type'), samples: res.status === 200 ? parseExposition(text) : [] };
}

const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

let seed002: Promise<FindingLine[]> | null = null;
/** The finding lines a replay of seed 002 logs (one port-reuse error, IPVS Service TCP 10.20.79.226:31199). */
const seed002Lines = (): Promise<FindingLine[]> => (seed002 ??= replay(SEED_002, captureLog().log));

describe('collector metrics', () => {
  it('counts each logged finding by kind, severity, node and Service, a folded line by the repeats it stands for', async () => {
    const lines = await seed002Lines();
    const error = lines.find((l) => l.finding === 'port-reuse-to-removed-endpoint');
    if (error === undefined) throw new Error('seed 002 replays without its port-reuse finding');
    const collector = new Collector({ log: captureLog().log });
    const metrics = new CollectorMetrics({ collector, processMetrics: false });
    const later = error.time + 30_000;
    metrics.finding({ ...error, count: 4, lastSeen: new Date(later).toISOString() });
    // A line logged late about older repeats does not move the time back.
    metrics.finding(error);
    const samples = parseExposition((await metrics.render()).body);
    const labels = { kind: 'port-reuse-to-removed-endpoint', severity: 'error', node: 'cn-beijing.10.20.79.226', service: 'TCP 10.20.79.226:31199' };
    expect(pick(samples, 'conntrail_findings_total')).toEqual([{ name: 'conntrail_findings_total', labels, value: 5 }]);
    expect(pick(samples, 'conntrail_finding_last_seen_timestamp_seconds')).toEqual([{ name: 'conntrail_finding_last_seen_timestamp_seconds', labels, value: later / 1000 }]);
  });

  it('folds Services past the cap into service="other", counts the folding and lists it as a collector bound', async () => {
    const [line] = await seed002Lines();
    if (line === undefined) throw new Error('seed 002 replays without findings');
    const collector = new Collector({ log: captureLog().log });
    const metrics = new CollectorMetrics({ collector, maxServices: 2, processMetrics: false });
    for (const service of ['default/a:80', 'default/b:80', 'default/c:80', 'default/d:80', 'default/a:80']) metrics.finding({ ...line, service });
    metrics.finding({ ...line, service: null });
    const samples = parseExposition((await metrics.render()).body);
    const byService = Object.fromEntries(pick(samples, 'conntrail_findings_total').map((s) => [s.labels.service, s.value]));
    expect(byService).toEqual({ 'default/a:80': 2, 'default/b:80': 1, other: 2, none: 1 });
    expect(pick(samples, 'conntrail_findings_services_folded_total')[0]?.value).toBe(2);
    expect(collector.bounds.list()).toEqual([expect.objectContaining({ bound: 'metrics.services', subject: 'collector', limit: 2, hits: 2 })]);
  });

  it('drops the findings series of a node that left the history window with it', async () => {
    const [line] = await seed002Lines();
    if (line === undefined) throw new Error('seed 002 replays without findings');
    let clock = Date.parse('2026-01-01T00:00:00Z');
    const collector = new Collector({ log: captureLog().log, historyMs: 60_000, now: () => clock });
    const metrics = new CollectorMetrics({ collector, processMetrics: false, now: () => clock });
    const session = { node: null, remote: 'test', send: () => undefined };
    collector.accept(session, { v: 1, type: 'hello', node: line.node, agentVersion: 't', intervalMs: 1000, startedAt: clock });
    metrics.finding(line);
    metrics.finding({ ...line, node: 'still-here' });
    collector.disconnect(session, 1000);
    clock += 120_000;
    expect(collector.expire()).toEqual([line.node]);
    const samples = parseExposition((await metrics.render()).body);
    expect(pick(samples, 'conntrail_findings_total').map((s) => s.labels.node)).toEqual(['still-here']);
    expect(pick(samples, 'conntrail_finding_last_seen_timestamp_seconds').map((s) => s.labels.node)).toEqual(['still-here']);
  });

  it('serves node connection, lag, records, source states and rejected frames on /metrics behind the token, and on --metrics-listen without it', async () => {
    const log = captureLog().log;
    const collector = new Collector({ log });
    const metrics = new CollectorMetrics({ collector });
    const server = new CollectorServer({ collector, log, token: 's3cret', metrics });
    closers.push(() => server.close());
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    if (typeof addr === 'string') throw new Error('expected a TCP address');
    const recording = new Map([
      ['/proc/net/nf_conntrack', `${TIME_WAIT}\n${OTHER}\n`],
      ['/proc/sys/net/ipv4/vs/conn_reuse_mode', '0\n'],
      ['/proc/sys/kernel/osrelease', '4.19.91\n'],
    ]);
    const agent = new Agent({ node: 'node-a', collectorUrl: `ws://127.0.0.1:${addr.port}`, intervalMs: 100, token: 's3cret', version: 'test', state: new NodeState(createSamplers(), createRecordedIO(() => recording)), log, readFacts: () => Promise.resolve(facts) });
    agent.start();
    closers.push(() => agent.stop());
    const url = `http://127.0.0.1:${addr.port}/metrics`;

    expect((await scrape(url)).status).toBe(401);
    expect((await scrape(url, 'wrong')).status).toBe(401);
    const s = await waitFor('the node in the metrics', async () => {
      const r = await scrape(url, 's3cret');
      return pick(r.samples, 'conntrail_node_records', { node: 'node-a', source: 'conntrack' })[0]?.value === 2 ? r : null;
    });
    expect(s.type).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(pick(s.samples, 'conntrail_node_connected', { node: 'node-a' })[0]?.value).toBe(1);
    const lag = pick(s.samples, 'conntrail_node_lag_seconds', { node: 'node-a' })[0]?.value;
    expect(lag).toBeGreaterThanOrEqual(0);
    expect(lag).toBeLessThan(5);
    // One series per state, 1 on the one the agent reported: IPVS is not recorded, so ipvsadm is missing.
    expect(pick(s.samples, 'conntrail_source_state', { node: 'node-a', source: 'ipvs' }).map((x) => [x.labels.state, x.value])).toEqual([
      ['ok', 0],
      ['unavailable', 1],
      ['failed', 0],
    ]);
    expect(pick(s.samples, 'conntrail_source_state', { node: 'node-a', source: 'conntrack', state: 'ok' })[0]?.value).toBe(1);
    expect(pick(s.samples, 'conntrail_resyncs_total', { node: 'node-a' })[0]?.value).toBe(0);
    expect(pick(s.samples, 'conntrail_incidents_open')[0]?.value).toBe(0);
    expect(pick(s.samples, 'process_cpu_user_seconds_total')).toHaveLength(1);

    // A frame before hello is rejected and counted by its reason.
    const ws = new WebSocket(`ws://127.0.0.1:${addr.port}`, SUBPROTOCOL, { headers: { authorization: 'Bearer s3cret' } });
    closers.push(() => ws.close());
    await new Promise((res) => ws.once('open', res));
    ws.send(JSON.stringify({ v: 1, type: 'diff', seq: 1, time: Date.now(), changes: [], status: [] }));
    ws.send('{"v":1,"type":"nonsense"}');
    const rejected = await waitFor('rejections counted', async () => {
      const r = await scrape(url, 's3cret');
      const by = Object.fromEntries(pick(r.samples, 'conntrail_frames_rejected_total').map((x) => [x.labels.reason, x.value]));
      return by['before-hello'] === 1 && by.malformed === 1 ? by : null;
    });
    expect(rejected).toEqual({ 'before-hello': 1, malformed: 1 });

    // The separate listener needs no token and serves nothing else.
    const plain = await startMetricsListener(metrics, { host: '127.0.0.1', port: 0 });
    closers.push(() => plain.close());
    if (typeof plain.address === 'string') throw new Error('expected a TCP address');
    const open = await scrape(`http://127.0.0.1:${plain.address.port}/metrics`);
    expect(open.status).toBe(200);
    expect(pick(open.samples, 'conntrail_node_connected', { node: 'node-a' })[0]?.value).toBe(1);
    expect((await fetch(`http://127.0.0.1:${plain.address.port}/api/nodes`)).status).toBe(404);

    await agent.stop();
    const after = await waitFor('the node disconnected', async () => {
      const r = await scrape(url, 's3cret');
      return pick(r.samples, 'conntrail_node_connected', { node: 'node-a' })[0]?.value === 0 ? r : null;
    });
    // Still listed (within the window) with its records, and its lag keeps growing.
    expect(pick(after.samples, 'conntrail_node_records', { node: 'node-a', source: 'conntrack' })[0]?.value).toBe(2);
  });

  it('counts open incidents: those a finding would still join', async () => {
    const [line] = await seed002Lines();
    if (line === undefined) throw new Error('seed 002 replays without findings');
    const t = line.time;
    const incidents = [{ id: 'a', service: 's', nodes: new Set(['n']), findings: [line], firstFinding: t - 60_000, lastFinding: t - 60_000 }, { id: 'b', service: 's', nodes: new Set(['n']), findings: [line], firstFinding: t - 600_000, lastFinding: t - 400_000 }];
    const metrics = new CollectorMetrics({ collector: new Collector({ log: captureLog().log }), incidents: () => incidents, now: () => t, processMetrics: false });
    expect(pick(parseExposition((await metrics.render()).body), 'conntrail_incidents_open')[0]?.value).toBe(1);
  });
});

describe('agent metrics', () => {
  it('serves sample durations, records, unreadable lines, source states, frames, bytes and reconnects on the health port', async () => {
    const log = captureLog().log;
    const collector = new Collector({ log });
    const server = new CollectorServer({ collector, log, token: null });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    if (typeof addr === 'string') throw new Error('expected a TCP address');
    // One line conntrack's parser cannot read.
    const recording = new Map([
      ['/proc/net/nf_conntrack', `${TIME_WAIT}\nthis is not a conntrack line\n`],
      ['/proc/sys/kernel/osrelease', '4.19.91\n'],
    ]);
    const state = new NodeState(createSamplers(), createRecordedIO(() => recording));
    const metrics: AgentMetrics = new AgentMetrics({ statuses: () => state.statuses(), skippedTicks: () => agent.skippedTicks, connected: () => agent.health().connected, processMetrics: false });
    state.onSampled((source, ms) => metrics.sampled(source, ms));
    const agent: Agent = new Agent({ node: 'node-a', collectorUrl: `ws://127.0.0.1:${addr.port}`, intervalMs: 100, token: null, version: 'test', state, log, readFacts: () => Promise.resolve(facts), metrics });
    agent.start();
    closers.push(() => agent.stop());
    const health = await startHealthServer(() => agent.health(), { host: '127.0.0.1', port: 0 }, { metrics });
    closers.push(() => health.close());
    const url = `http://127.0.0.1:${health.address.port}/metrics`;

    const first = await waitFor('streaming', async () => {
      const r = await scrape(url);
      return collector.nodes.get('node-a')?.lastSeq != null && (pick(r.samples, 'conntrail_agent_sample_duration_seconds_count', { source: 'conntrack' })[0]?.value ?? 0) >= 3 ? r : null;
    });
    expect(pick(first.samples, 'conntrail_agent_source_records', { source: 'conntrack' })[0]?.value).toBe(1);
    expect(pick(first.samples, 'conntrail_agent_source_problems', { source: 'conntrack' })[0]?.value).toBe(1);
    expect(pick(first.samples, 'conntrail_agent_source_state', { source: 'ipvs', state: 'unavailable' })[0]?.value).toBe(1);
    // An unavailable source is not sampled, so it has no duration.
    expect(pick(first.samples, 'conntrail_agent_sample_duration_seconds_count', { source: 'ipvs' })).toEqual([]);
    const inf = pick(first.samples, 'conntrail_agent_sample_duration_seconds_bucket', { source: 'conntrack', le: '+Inf' })[0]?.value;
    expect(inf).toBe(pick(first.samples, 'conntrail_agent_sample_duration_seconds_count', { source: 'conntrack' })[0]?.value);
    expect(pick(first.samples, 'conntrail_agent_connected')[0]?.value).toBe(1);
    expect(pick(first.samples, 'conntrail_agent_reconnects_total')[0]?.value).toBe(0);
    expect(pick(first.samples, 'conntrail_agent_skipped_ticks_total')[0]?.value).toBe(0);
    // hello, facts, one snapshot part per source, snapshot-end, then diffs.
    const frames = pick(first.samples, 'conntrail_agent_sent_frames_total')[0]?.value ?? 0;
    const bytes = pick(first.samples, 'conntrail_agent_sent_bytes_total')[0]?.value ?? 0;
    expect(frames).toBeGreaterThanOrEqual(4);
    expect(bytes).toBeGreaterThan(frames * 20);

    // The collector goes away and comes back on the same port: one reconnect.
    await server.close();
    const again = new CollectorServer({ collector: new Collector({ log }), log, token: null });
    closers.push(() => again.close());
    await again.listen({ host: '127.0.0.1', port: addr.port });
    const back = await waitFor(
      'the reconnect counted',
      async () => {
        const r = await scrape(url);
        return pick(r.samples, 'conntrail_agent_reconnects_total')[0]?.value === 1 ? r : null;
      },
      15_000,
    );
    expect(pick(back.samples, 'conntrail_agent_sent_frames_total')[0]?.value).toBeGreaterThan(frames);
  });
});
