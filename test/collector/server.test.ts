import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Agent } from '../../agent/agent.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { Collector } from '../../collector/receive/collector.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import { SUBPROTOCOL } from '../../contract/protocol.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';

// Seed 002: the same client tuple goes TIME_WAIT -> SYN_SENT/SYN_RECV, towards 10.27.1.249.
const TIME_WAIT =
  'ipv4     2 tcp      6 60 TIME_WAIT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 [ASSURED] mark=0 zone=0 use=2';
const TIME_WAIT_LATER =
  'ipv4     2 tcp      6 58 TIME_WAIT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 [ASSURED] mark=0 zone=0 use=2';
const SYN_SENT =
  'ipv4     2 tcp      6 119 SYN_SENT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 [UNREPLIED] src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 mark=0 zone=0 use=2';
const OTHER =
  'ipv4     2 tcp      6 107 SYN_SENT src=10.27.2.92 dst=10.27.1.245 sport=37912 dport=18080 [UNREPLIED] src=10.27.1.245 dst=10.27.2.92 sport=18080 dport=37912 mark=0 zone=0 use=2';
const IPVS_TW = `IPVS connection entries
pro expire state       source             virtual            destination
TCP 01:00  TIME_WAIT   10.23.31.87:58578  10.20.79.226:31199 10.27.1.249:80
`;
const IPVS_SR = `IPVS connection entries
pro expire state       source             virtual            destination
TCP 00:59  SYN_RECV    10.23.31.87:58578  10.20.79.226:31199 10.27.1.249:80
`;

const facts: NodeFacts = { hostname: 'cn-beijing', kernel: '4.19.91', os: 'test', arch: 'x64', cpus: 2, memoryBytes: 1, interfaces: [] };

interface Rig {
  collectorLog: ReturnType<typeof captureLog>;
  agentLog: ReturnType<typeof captureLog>;
  collector: Collector;
  server: CollectorServer;
  port: number;
  agent: Agent | null;
  recording: Map<string, string>;
}
const rigs: Rig[] = [];
afterEach(async () => {
  for (const r of rigs.splice(0)) {
    await r.agent?.stop();
    await r.server.close();
  }
});

async function startCollector(token: string | null, port = 0): Promise<Omit<Rig, 'agent' | 'recording' | 'agentLog'>> {
  const collectorLog = captureLog();
  const collector = new Collector({ log: collectorLog.log });
  const server = new CollectorServer({ collector, log: collectorLog.log, token });
  const addr = await server.listen({ host: '127.0.0.1', port });
  if (typeof addr === 'string') throw new Error('expected a TCP address');
  return { collectorLog, collector, server, port: addr.port };
}

function startAgent(port: number, token: string | null, recording: Map<string, string>, node = 'node-a') {
  const agentLog = captureLog();
  const agent = new Agent({
    node,
    collectorUrl: `ws://127.0.0.1:${port}`,
    intervalMs: 100,
    token,
    version: 'test',
    state: new NodeState(createSamplers(), createRecordedIO(() => recording)),
    log: agentLog.log,
    readFacts: () => Promise.resolve(facts),
  });
  agent.start();
  return { agent, agentLog };
}

async function rig(token: string | null = 's3cret'): Promise<Rig> {
  const c = await startCollector(token);
  const recording = new Map([
    ['/proc/net/nf_conntrack', `${TIME_WAIT}\n${OTHER}\n`],
    ['ipvsadm -Lnc', IPVS_TW],
    ['/proc/sys/net/ipv4/vs/conn_reuse_mode', '0\n'],
    ['/proc/sys/kernel/osrelease', '4.19.91\n'],
  ]);
  const { agent, agentLog } = startAgent(c.port, token, recording);
  const r: Rig = { ...c, agent, agentLog, recording };
  rigs.push(r);
  return r;
}

async function api(port: number, path: string, token: string | null = 's3cret'): Promise<{ status: number; body: unknown }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, token === null ? {} : { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: await res.json() };
}

type RecordsBody = { records: { state: string | null; raw: string; orig: { sport: number } }[] };

describe('collector and agent over WebSocket', () => {
  it('rebuilds the node from the snapshot, then follows a state change on the same tuple', async () => {
    const r = await rig();
    const first = await waitFor('snapshot at the collector', async () => {
      const { body } = await api(r.port, '/api/nodes/node-a/conntrack');
      return (body as RecordsBody).records?.length === 2 ? (body as RecordsBody) : null;
    });
    expect(first.records.map((e) => e.state).sort()).toEqual(['SYN_SENT', 'TIME_WAIT']);
    expect(first.records.find((e) => e.state === 'TIME_WAIT')?.raw).toBe(TIME_WAIT);

    // A timer counting down is not news; a state change on the same tuple is.
    r.recording.set('/proc/net/nf_conntrack', `${TIME_WAIT_LATER}\n${OTHER}\n`);
    const seqBefore = r.collector.nodes.get('node-a')?.lastSeq ?? 0;
    await waitFor('three more ticks', () => (r.collector.nodes.get('node-a')?.lastSeq ?? 0) >= seqBefore + 3);
    const conntrackDiffs = r.collector.timeline('node-a').flatMap((e) => (e.kind === 'diff' ? e.changes.filter((c) => c.source === 'conntrack') : []));
    const sent = conntrackDiffs.flatMap((c) => [...c.added, ...c.changed, ...c.refreshed]) as { orig: { sport: number } }[];
    // The TIME_WAIT timer counted down (60 -> 58): nothing to send for it.
    expect(sent.filter((e) => e.orig.sport === 58578)).toEqual([]);
    r.recording.set('/proc/net/nf_conntrack', `${SYN_SENT}\n${OTHER}\n`);
    r.recording.set('ipvsadm -Lnc', IPVS_SR);
    const after = await waitFor('the SYN_SENT change', async () => {
      const { body } = await api(r.port, '/api/nodes/node-a/conntrack');
      const b = body as RecordsBody;
      return b.records.filter((e) => e.orig.sport === 58578).every((e) => e.state === 'SYN_SENT') ? b : null;
    });
    expect(after.records).toHaveLength(2);
    expect(after.records.find((e) => e.orig.sport === 58578)?.raw).toBe(SYN_SENT);
    const ipvs = (await api(r.port, '/api/nodes/node-a/ipvs-conn')).body as RecordsBody;
    expect(ipvs.records.map((e) => e.state)).toEqual(['SYN_RECV']);

    // Timeline: the change travelled as one `changed` record, not remove + add.
    const tl = r.collector.timeline('node-a');
    const conntrackChanges = tl.flatMap((e) => e.changes.filter((c) => c.source === 'conntrack' && e.kind === 'diff'));
    expect(conntrackChanges.some((c) => c.changed.length === 1 && c.added.length === 0 && c.removed.length === 0)).toBe(true);
  });

  it('lists each node with its sources, counts, sample time and what is unavailable', async () => {
    const r = await rig();
    const nodes = await waitFor('node listing', async () => {
      const { body } = await api(r.port, '/api/nodes');
      const list = (body as { nodes: { node: string; kernel: string | null; lagMs: number | null; sources: { source: string; state: string; records: number; reason: string | null }[] }[] }).nodes;
      return list[0]?.sources.length ? list : null;
    });
    const n = nodes[0];
    expect(n?.node).toBe('node-a');
    expect(n?.kernel).toBe('4.19.91');
    expect(n?.lagMs).toBeGreaterThanOrEqual(0);
    const byName = new Map(n?.sources.map((s) => [s.source, s]));
    expect(byName.get('conntrack')).toMatchObject({ state: 'ok', records: 2 });
    expect(byName.get('ipvs')).toMatchObject({ state: 'unavailable' });
    expect(byName.get('ipvs')?.reason).toMatch(/ipvsadm/);
    const sysctl = (await api(r.port, '/api/nodes/node-a/sysctl')).body as { records: { name: string; value: string }[] };
    expect(sysctl.records).toContainEqual({ name: 'net.ipv4.vs.conn_reuse_mode', value: '0', raw: 'net.ipv4.vs.conn_reuse_mode = 0' });
    // Reported once: the collector log has one line for the unavailable IPVS source, not one per tick.
    await new Promise((res) => setTimeout(res, 400));
    const ipvsLines = r.collectorLog.lines.filter((l) => l.source === 'ipvs' && l.state === 'unavailable');
    expect(ipvsLines).toHaveLength(1);
  });

  it('refuses an agent with a wrong token and an API request without one, and gives them nothing', async () => {
    const c = await startCollector('s3cret');
    const recording = new Map([['/proc/sys/kernel/osrelease', '6.1\n']]);
    const { agent, agentLog } = startAgent(c.port, 'wrong', recording, 'intruder');
    rigs.push({ ...c, agent, agentLog, recording });
    await waitFor('the refusal in the agent log', () => agentLog.find('collector refused our token'));
    expect(c.collector.nodes.has('intruder')).toBe(false);
    expect(c.collectorLog.find('refused an agent connection')).toMatchObject({ reason: 'wrong token' });

    const noToken = await api(c.port, '/api/nodes', null);
    expect(noToken).toEqual({ status: 401, body: { error: 'unauthorized' } });
    const health = await api(c.port, '/healthz', null);
    expect(health.status).toBe(200);
  });

  it('rejects and logs a malformed frame without losing what it already had, and asks for a resync after a gap', async () => {
    const r = await rig();
    await waitFor('snapshot', () => r.collector.nodes.get('node-a')?.lastSeq !== null && r.collector.nodes.get('node-a')?.recordMap('conntrack').size === 2);
    const ws = new WebSocket(`ws://127.0.0.1:${r.port}`, SUBPROTOCOL, { headers: { authorization: 'Bearer s3cret' } });
    const received: string[] = [];
    ws.on('message', (d) => received.push(d.toString()));
    await new Promise((res) => ws.once('open', res));
    const now = Date.now();
    ws.send(JSON.stringify({ v: 1, type: 'hello', node: 'forged', agentVersion: 'x', intervalMs: 1000, startedAt: now }));
    ws.send(JSON.stringify({ v: 1, type: 'snapshot-end', seq: 5, time: now + 1, status: [] }));
    ws.send(`{"v":1,"type":"diff","seq":6,"time":${now + 2},"changes":[{"source":"conntrack","added":[{"bogus":true}]}],"status":[]}`);
    await waitFor('rejection log', () => r.collectorLog.find('rejected a frame (malformed)'));
    expect(r.collectorLog.find('rejected a frame (malformed)')).toMatchObject({ node: 'forged', reason: 'malformed', error: expect.stringMatching(/changes\[0\]\.added\[0\]/) });
    expect(r.collector.nodes.get('forged')?.lastSeq).toBe(5);
    ws.send(JSON.stringify({ v: 1, type: 'diff', seq: 9, time: now + 3, changes: [], status: [] }));
    await waitFor('resync request', () => received.find((m) => m.includes('"resync"')));
    expect(JSON.parse(received.find((m) => m.includes('resync')) ?? '{}')).toMatchObject({ type: 'resync', reason: 'sequence gap: expected 6, got 9' });
    ws.close();
    // The real node was not disturbed.
    expect(r.collector.nodes.get('node-a')?.recordMap('conntrack').size).toBe(2);
  });

  it('resyncs to identical state after the collector is killed and restarted', async () => {
    const r = await rig();
    const before = await waitFor('snapshot', async () => {
      const { body } = await api(r.port, '/api/nodes/node-a/conntrack');
      return (body as RecordsBody).records?.length === 2 ? (body as RecordsBody) : null;
    });
    await r.server.close();
    r.recording.set('/proc/net/nf_conntrack', `${SYN_SENT}\n${OTHER}\n`);
    const again = await startCollector('s3cret', r.port);
    rigs.push({ ...again, agent: null, agentLog: r.agentLog, recording: r.recording });
    const after = await waitFor('resync into the new collector', async () => {
      const res = await api(again.port, '/api/nodes/node-a/conntrack').catch(() => null);
      const b = res?.body as RecordsBody | undefined;
      return b?.records?.length === 2 ? b : null;
    }, 15_000);
    expect(after.records.map((e) => e.state).sort()).toEqual(['SYN_SENT', 'SYN_SENT']);
    expect(before.records.map((e) => e.raw)).toContain(TIME_WAIT);
    expect(again.collectorLog.find('snapshot applied')).toMatchObject({ node: 'node-a' });
  });
});
