// Issue 10's restart test, with real processes on the real kernel: a real
// `conntrail agent` inside a lab node programmed the iptables way, a real
// `conntrail collector --data-dir`. The collector is killed with SIGKILL;
// while it is down the node's conntrack changes (a TIME_WAIT entry to the
// Service reopened as SYN_SENT on the same tuple, towards the endpoint a
// rollout removed; an entry added and deleted); then it starts again on the
// same socket and data dir. The agent must resume from its journal, the
// collector must log the port-reuse finding, keep the incident from before
// the restart, and its bundle must hold the reopened transition and the entry
// that came and went, and replay to its findings; its view of the node must
// equal the node's own /proc/net/nf_conntrack.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConntrack } from '../../agent/sources/conntrack.ts';
import { replay } from '../../bin/replay.ts';
import { readBundle } from '../../collector/incidents/bundle.ts';
import type { ConntrackEntry } from '../../contract/records.ts';
import { sources } from '../../contract/sources.ts';
import { collectJsonLines, waitFor } from '../helpers/capture-log.ts';
import { buildCluster, type Cluster } from '../lab/cluster.ts';
import type { ServiceModel } from '../lab/kube-proxy.ts';
import { assertLabPrerequisites, Lab, type LabProcess } from '../lab/netns.ts';
import { nodeBinary } from '../lab/traffic.ts';
import { cli } from './harness.ts';

const run = promisify(execFile);

const CLUSTER_IP = '198.18.64.10';
/** A client address no namespace has: the entries are made with `conntrack -I`, as a client's would read. */
const CLIENT = '198.18.200.7';
const BEFORE_SPORT = 41001;
const DURING_SPORT = 41002;
const CAME_AND_WENT_SPORT = 41003;

const webSvc = (endpoints: ServiceModel['endpoints']): ServiceModel => ({
  namespace: 'shop', name: 'web', portName: 'http', protocol: 'tcp', clusterIP: CLUSTER_IP, port: 80, nodePort: 30080, externalTrafficPolicy: 'Cluster', endpoints,
});

let lab: Lab;
let cluster: Cluster;
let dir: string;
let sock: string;
let tokenFile: string;
let dataDir: string;
let agent: LabProcess;
let collector: ChildProcess | null = null;
/** The current collector process's log lines; a restart starts a new array. */
let lines: Record<string, unknown>[] = [];
/** Every process's lines, oldest process first: what the log said across the restart. */
const allLines: Record<string, unknown>[][] = [];
const TOKEN = 'restart-token';

function startCollector(): void {
  rmSync(sock, { force: true });
  lines = [];
  allLines.push(lines);
  const child = spawn(nodeBinary(), [cli, 'collector', '--listen', `unix:${sock}`, '--token-file', tokenFile, '--capture', 'off', '--no-kubernetes', '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'inherit'] });
  collectJsonLines(child.stdout, lines);
  collector = child;
}

async function killCollector(): Promise<void> {
  const c = collector;
  if (c === null || c.exitCode !== null || c.signalCode !== null) return;
  const exited = new Promise((r) => c.once('exit', r));
  c.kill('SIGKILL');
  await exited;
}

function api(path: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: sock, path, headers: { authorization: `Bearer ${TOKEN}` }, timeout: 5_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}
const json = async <T>(path: string): Promise<T> => {
  const r = await api(path);
  if (r.status !== 200) throw new Error(`${path}: HTTP ${r.status}: ${r.body.toString()}`);
  return JSON.parse(r.body.toString()) as T;
};

const tupleKey = (sport: number) => `${CLIENT}:${sport}>${CLUSTER_IP}:80`;
const keyOf = (e: ConntrackEntry) => `${e.orig.src}:${e.orig.sport}>${e.orig.dst}:${e.orig.dport}`;

/** The collector's conntrack states for the lab's client tuples. */
async function collectorStates(): Promise<Map<string, string | null>> {
  const { records } = await json<{ records: ConntrackEntry[] }>('/api/nodes/node-1/conntrack');
  return new Map(records.filter((e) => e.orig.src === CLIENT).map((e) => [keyOf(e), e.state]));
}

/** `conntrack -I/-U/-D` inside node-1: what a client's connection through the Service leaves in the node's table. */
async function conntrack(op: '-I' | '-U' | '-D', sport: number, o: { state?: string; dst?: string; dport?: number; replySrc?: string; replySport?: number } = {}): Promise<void> {
  const dst = o.dst ?? CLUSTER_IP;
  const dport = o.dport ?? 80;
  const args = ['-p', 'tcp', '-s', CLIENT, '-d', dst, '--sport', String(sport), '--dport', String(dport)];
  if (op === '-I') args.push('-r', o.replySrc ?? dst, '-q', CLIENT, '--reply-port-src', String(o.replySport ?? dport), '--reply-port-dst', String(sport), '-u', 'SEEN_REPLY,ASSURED', '-t', '300');
  if (o.state !== undefined) args.push('--state', o.state);
  if (op === '-U') args.push('-t', '300');
  await lab.exec('node-1', ['conntrack', op, ...args]);
}

async function nodeTable(): Promise<Map<string, string | null>> {
  const { stdout } = await lab.exec('node-1', ['cat', '/proc/net/nf_conntrack']);
  const parsed = parseConntrack(stdout);
  expect(parsed.problems).toEqual([]);
  return new Map(parsed.records.map((e) => [sources.conntrack.keyOf(e), e.state]));
}

const agentLog = (): Record<string, unknown>[] =>
  agent.lines.flatMap((l) => {
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });

const portReuse = (sport: number) => (l: Record<string, unknown>) => l.finding === 'port-reuse-to-removed-endpoint' && (l.tuple as { sport?: number } | undefined)?.sport === sport;

beforeAll(async () => {
  assertLabPrerequisites();
  lab = new Lab();
  cluster = await buildCluster(lab, {
    nodes: [{ name: 'node-1', proxyMode: 'iptables' }],
    pods: [{ name: 'web-a', node: 'node-1' }, { name: 'web-b', node: 'node-1' }],
  });
  const web = (p: string) => ({ ip: cluster.pod(p).ip, port: 8080, nodeName: cluster.pod(p).node, ready: true });
  await cluster.applyServices({ services: [webSvc([web('web-a'), web('web-b')])] });
  dir = mkdtempSync(join(tmpdir(), 'conntrail-restart-'));
  sock = join(dir, 'collector.sock');
  tokenFile = join(dir, 'token');
  dataDir = join(dir, 'data');
  writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  startCollector();
  await waitFor('collector listening', () => lines.find((l) => l.msg === 'collector listening'), 10_000);
  agent = lab.spawn('node-1', [nodeBinary(), cli, 'agent', '--collector', `ws+unix:${sock}`, '--node', 'node-1', '--interval', '1s', '--token-file', tokenFile]);
  await waitFor('the agent snapshot', () => lines.find((l) => l.msg === 'snapshot applied' && l.node === 'node-1'), 20_000);
}, 90_000);

afterAll(async () => {
  await killCollector();
  await lab?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('collector restart with --data-dir (kill -9, conntrack changes while it is down)', { timeout: 120_000 }, () => {
  let incidentBefore = '';

  it('before the kill: a rollout removes web-a, a reused tuple towards it opens an incident', async () => {
    const web = (p: string) => ({ ip: cluster.pod(p).ip, port: 8080, nodeName: cluster.pod(p).node, ready: true });
    await cluster.applyServices({ services: [webSvc([web('web-b')])] });
    const webA = cluster.pod('web-a').ip;
    await conntrack('-I', BEFORE_SPORT, { state: 'TIME_WAIT', replySrc: webA, replySport: 8080 });
    await waitFor('the TIME_WAIT entry at the collector', async () => (await collectorStates()).get(tupleKey(BEFORE_SPORT)) === 'TIME_WAIT', 10_000);
    await conntrack('-U', BEFORE_SPORT, { state: 'SYN_SENT' });
    await waitFor('the port-reuse finding', () => lines.find(portReuse(BEFORE_SPORT)), 10_000);
    const opened = await waitFor('the incident', () => lines.find((l) => l.msg === 'incident opened' && l.service === 'shop/web:http'), 5_000);
    incidentBefore = String(opened.incident);
    // The second reuse begins before the kill: its TIME_WAIT is seen (and made durable) by this collector.
    await conntrack('-I', DURING_SPORT, { state: 'TIME_WAIT', replySrc: webA, replySport: 8080 });
    await waitFor('the second TIME_WAIT entry at the collector', async () => (await collectorStates()).get(tupleKey(DURING_SPORT)) === 'TIME_WAIT', 10_000);
    const seq = (await json<{ nodes: { node: string; lastSeq: number }[] }>('/api/nodes')).nodes.find((n) => n.node === 'node-1')?.lastSeq ?? 0;
    // Commits run every 250 ms: wait for a tick past the one that showed the entry.
    await waitFor('a later step', async () => ((await json<{ nodes: { node: string; lastSeq: number }[] }>('/api/nodes')).nodes.find((n) => n.node === 'node-1')?.lastSeq ?? 0) > seq + 1, 5_000);
  });

  it('after kill -9, changes while down and a restart: the agent resumes from its journal, the finding is logged, the incident from before is listed', async () => {
    await killCollector();
    const killedAt = Date.now();
    // While the collector is down: the TIME_WAIT entry is reopened on the same tuple, and another entry comes and goes.
    await conntrack('-U', DURING_SPORT, { state: 'SYN_SENT' });
    await conntrack('-I', CAME_AND_WENT_SPORT, { state: 'ESTABLISHED', dst: '198.18.99.1', dport: 9999 });
    await new Promise((r) => setTimeout(r, 2_500));
    await conntrack('-D', CAME_AND_WENT_SPORT, { dst: '198.18.99.1', dport: 9999 });
    await new Promise((r) => setTimeout(r, 2_500));
    startCollector();
    const reloaded = await waitFor('the reload', () => lines.find((l) => l.msg === 'reloaded from the data store'), 10_000);
    expect(reloaded).toMatchObject({ nodeCount: 1, incidents: 1 });
    expect(Number(reloaded.steps)).toBeGreaterThan(3);
    await waitFor('collector listening', () => lines.find((l) => l.msg === 'collector listening'), 10_000);
    const resumed = await waitFor('the agent resuming', () => agentLog().find((l) => typeof l.msg === 'string' && l.msg.startsWith('resuming from the journal') && Date.parse(String(l.time)) >= killedAt), 20_000);
    // Every tick of the ~5 s outage, and the one before the kill the store had not acknowledged, if any.
    expect(Number(resumed.frames)).toBeGreaterThanOrEqual(4);
    expect(lines.find((l) => l.msg === 'agent connected; it resumes its run after the last step held' && l.node === 'node-1')).toBeDefined();
    const finding = await waitFor('the port-reuse finding for the tuple reopened while the collector was down', () => lines.find(portReuse(DURING_SPORT)), 15_000);
    expect(finding).toMatchObject({ severity: 'error', node: 'node-1', service: 'shop/web:http', endpoint: `${cluster.pod('web-a').ip}:8080` });
    expect(lines.filter((l) => l.msg === 'snapshot applied')).toEqual([]);
    expect(lines.filter((l) => l.msg === 'asking agent for a resync')).toEqual([]);
    const incidents = await json<{ id: string; findings: number }[]>('/api/incidents');
    expect(incidents.map((i) => i.id)).toContain(incidentBefore);
    // The finding after the restart joins the incident from before it (same Service, within minutes).
    expect(incidents.find((i) => i.id === incidentBefore)?.findings).toBeGreaterThanOrEqual(2);
  });

  it('the bundle holds the reopened transition and the entry that came and went, and replays to its findings, from before and after the restart', async () => {
    const file = join(dir, 'since.tar.gz');
    const got = await run(process.execPath, [cli, 'bundle', '--collector', `unix:${sock}`, '--since', '10m', '-o', file, '--token-file', tokenFile]);
    expect(got.stderr).toContain(`wrote ${file}`);
    const { files } = await readBundle(file);
    const steps = (files.get('timeline/node-1.jsonl') ?? '').trim().split('\n').map((l) => JSON.parse(l) as { seq: number; kind: string; changes: { source: string; added: ConntrackEntry[]; changed: ConntrackEntry[]; removed: string[] }[] });
    const statesOf = (sport: number): (string | null)[] =>
      steps.flatMap((s) => s.changes.filter((c) => c.source === 'conntrack').flatMap((c) => [...c.added, ...c.changed].filter((e) => e.orig.src === CLIENT && e.orig.sport === sport).map((e) => e.state)));
    expect(statesOf(BEFORE_SPORT)).toEqual(['TIME_WAIT', 'SYN_SENT']);
    // TIME_WAIT seen before the kill, SYN_SENT while the collector was down: one `changed` on the same tuple.
    expect(statesOf(DURING_SPORT)).toEqual(['TIME_WAIT', 'SYN_SENT']);
    const reopened = steps.find((s) => s.changes.some((c) => c.source === 'conntrack' && c.changed.some((e) => e.orig.sport === DURING_SPORT && e.state === 'SYN_SENT')));
    expect(reopened?.kind).toBe('diff');
    expect(statesOf(CAME_AND_WENT_SPORT)).toEqual(['ESTABLISHED']);
    const removedAt = steps.findIndex((s) => s.changes.some((c) => c.source === 'conntrack' && c.removed.some((k) => k.includes(`|${CLIENT}|${CAME_AND_WENT_SPORT}|`))));
    expect(removedAt).toBeGreaterThan(steps.findIndex((s) => s.changes.some((c) => c.source === 'conntrack' && c.added.some((e) => e.orig.sport === CAME_AND_WENT_SPORT))));
    // One snapshot at the start of the window, diffs after: the restart left no snapshot in the timeline.
    expect(steps.filter((s) => s.kind === 'snapshot')).toHaveLength(1);
    const stored = (files.get('findings.jsonl') ?? '').trim().split('\n').map((l) => JSON.parse(l) as { finding: string; tuple?: { sport: number } });
    const reuse = stored.filter((f) => f.finding === 'port-reuse-to-removed-endpoint').map((f) => f.tuple?.sport);
    expect(reuse).toEqual([BEFORE_SPORT, DURING_SPORT]);
    expect(JSON.parse(JSON.stringify(await replay(file, pino({ level: 'silent' }))))).toEqual(stored);
  });

  it('`conntrail findings` lists the findings logged before the kill and after the restart, as the two processes logged them', async () => {
    const got = await run(process.execPath, [cli, 'findings', '--collector', `unix:${sock}`, '--since', '10m', '--json', '--token-file', tokenFile]);
    const served = got.stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    // The independent source: every finding line either collector process wrote to its log (the restarted one's log has only its own).
    const logged = allLines.flat().filter((l) => typeof l.finding === 'string');
    expect(lines.filter((l) => typeof l.finding === 'string').length).toBeLessThan(logged.length);
    const pick = (l: Record<string, unknown>) => ({ finding: l.finding, node: l.node, tuple: l.tuple, endpoint: l.endpoint, observedAt: l.observedAt, msg: l.msg, evidence: l.evidence });
    expect(served.map(pick)).toEqual(logged.map(pick));
    expect(served.filter((l) => l.finding === 'port-reuse-to-removed-endpoint').map((l) => (l.tuple as { sport: number }).sport)).toEqual([BEFORE_SPORT, DURING_SPORT]);
    // Rendered for a person, as `conntrail logs` renders the log: the evidence line of the first reuse, verbatim.
    const human = await run(process.execPath, [cli, 'findings', '--collector', `unix:${sock}`, '--since', '10m', '--no-color', '--token-file', tokenFile]);
    const firstEvidence = ((served[0]?.evidence ?? []) as { raw: string }[])[0]?.raw ?? '(none)';
    expect(human.stdout).toContain(firstEvidence);
    expect(human.stdout).toContain('port-reuse-to-removed-endpoint');
  });

  it("the collector's conntrack for node-1 equals the node's own /proc/net/nf_conntrack", async () => {
    let last = '';
    await waitFor('equal tables', async () => {
      const before = await nodeTable();
      await new Promise((r) => setTimeout(r, 1_200));
      const { records } = await json<{ records: ConntrackEntry[] }>('/api/nodes/node-1/conntrack');
      const seen = new Map(records.map((e) => [sources.conntrack.keyOf(e), e.state]));
      await new Promise((r) => setTimeout(r, 1_200));
      const after = await nodeTable();
      // Entries steady across both reads must be in the collector as they are; the collector holds nothing neither read showed.
      const missing = [...before].filter(([k, state]) => after.get(k) === state && seen.get(k) !== state);
      const extra = [...seen].filter(([k, state]) => before.get(k) !== state && after.get(k) !== state);
      last = JSON.stringify({ missing: missing.slice(0, 3), extra: extra.slice(0, 3), seen: seen.size, node: after.size });
      return missing.length === 0 && extra.length === 0 && seen.size > 0;
    }, 15_000).catch((err: Error) => {
      throw new Error(`${err.message}; last difference: ${last}`);
    });
    const states = await collectorStates();
    expect(states.get(tupleKey(DURING_SPORT))).toBe('SYN_SENT');
    expect([...states.keys()].some((k) => k.includes(`:${CAME_AND_WENT_SPORT}>`))).toBe(false);
  });
});
