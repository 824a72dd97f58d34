// One current session per node, over real sockets on loopback: a second live
// hello is refused and the first keeps streaming; a superseded connection
// closing late changes nothing; a half-open socket is cut within the
// liveness limit and the node's next connection starts over with a
// snapshot; a socket that never says hello, or never authenticates, is let go.
import { connect } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { NodeState } from '../../agent/node-state.ts';
import { parsers } from '../../agent/parsers.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { parseConntrack } from '../../agent/sources/conntrack.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import { CLOSE, Collector } from '../../collector/receive/collector.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';
import { RawWs } from '../helpers/collector-process.ts';

const TOKEN = 'session-token';
const LIVENESS_MS = 1_200;
const PING_MS = 200;
const HELLO_MS = 400;

const TIME_WAIT = 'ipv4     2 tcp      6 60 TIME_WAIT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 [ASSURED] mark=0 zone=0 use=2';
const SYN_SENT = 'ipv4     2 tcp      6 119 SYN_SENT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 [UNREPLIED] src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 mark=0 zone=0 use=2';
const OTHER = 'ipv4     2 tcp      6 107 SYN_SENT src=10.27.2.92 dst=10.27.1.245 sport=37912 dport=18080 [UNREPLIED] src=10.27.1.245 dst=10.27.2.92 sport=18080 dport=37912 mark=0 zone=0 use=2';
const [rTW, rSS, rOther] = [TIME_WAIT, SYN_SENT, OTHER].map((l) => parseConntrack(l).records[0]);

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function start(pingIntervalMs = PING_MS, headersTimeoutMs?: number): Promise<{ collector: Collector; log: ReturnType<typeof captureLog>; port: number }> {
  const log = captureLog();
  const collector = new Collector({ log: log.log });
  const server = new CollectorServer({ collector, log: log.log, token: TOKEN, livenessMs: LIVENESS_MS, pingIntervalMs, helloTimeoutMs: HELLO_MS, ...(headersTimeoutMs === undefined ? {} : { headersTimeoutMs }) });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  if (typeof addr === 'string') throw new Error('expected a TCP address');
  cleanups.push(() => server.close());
  return { collector, log, port: addr.port };
}

async function open(port: number, token: string | null = TOKEN): Promise<RawWs> {
  const ws = await RawWs.open(port, token);
  if (!(ws instanceof RawWs)) throw new Error(`upgrade refused with ${ws.refused}`);
  cleanups.push(() => ws.end());
  return ws;
}

/** hello, then a one-part conntrack snapshot at `seq`. */
function helloAndSnapshot(ws: RawWs, node: string, seq: number, records: readonly unknown[]): void {
  const now = Date.now();
  ws.json({ v: 1, type: 'hello', node, agentVersion: 'test', intervalMs: 1000, startedAt: now });
  ws.json({ v: 1, type: 'snapshot', seq, time: now, source: 'conntrack', part: 0, parts: 1, records });
  ws.json({ v: 1, type: 'snapshot-end', seq, time: now, status: [] });
}

const raws = (c: Collector, node: string): string[] => [...(c.nodes.get(node)?.recordMap('conntrack').values() ?? [])].map((r) => r.raw).sort();

describe('one current session per node', { timeout: 15_000 }, () => {
  it('refuses a second hello for a live node with 4409, and keeps applying the first connection\'s diffs', async () => {
    const { collector, log, port } = await start();
    const first = await open(port);
    helloAndSnapshot(first, 'node-a', 1, [rTW, rOther]);
    await waitFor('the first snapshot', () => collector.nodes.get('node-a')?.lastSeq === 1);

    const second = await open(port);
    helloAndSnapshot(second, 'node-a', 1, [rSS]);
    await waitFor('the refusal', () => second.closeCode !== null || second.closed);
    expect(second.closeCode).toBe(CLOSE.duplicate);
    expect(log.find('rejected a frame (duplicate-node)')).toMatchObject({ node: null, claimed: 'node-a' });
    // The refused connection's snapshot went nowhere.
    expect(raws(collector, 'node-a')).toEqual([TIME_WAIT, OTHER].sort());

    // The real agent's next diff still lands.
    first.json({ v: 1, type: 'diff', seq: 2, time: Date.now(), changes: [{ source: 'conntrack', added: [], removed: [], changed: [rSS], refreshed: [] }], status: [] });
    await waitFor('the first connection\'s diff', () => collector.nodes.get('node-a')?.lastSeq === 2);
    expect(raws(collector, 'node-a')).toEqual([SYN_SENT, OTHER].sort());
    expect(collector.nodes.get('node-a')).toMatchObject({ connected: true, resyncs: 0 });
    expect(first.received.filter((m) => m.includes('"resync"'))).toEqual([]);
  });

  it('ignores a stale close: the old connection closing after the node reconnected leaves it connected, with the new state', async () => {
    // Pings rarely: the old connection is known dead (silent past the limit) but not yet cut when the node reconnects.
    const { collector, log, port } = await start(60_000);
    const old = await open(port);
    helloAndSnapshot(old, 'node-b', 1, [rTW, rOther]);
    await waitFor('the old snapshot', () => collector.nodes.get('node-b')?.lastSeq === 1);
    // The old connection goes quiet (its pod is being replaced, or the path to it broke).
    old.goSilent();
    await new Promise((r) => setTimeout(r, LIVENESS_MS + 50));
    const fresh = await open(port);
    helloAndSnapshot(fresh, 'node-b', 1, [rSS]);
    await waitFor('the new snapshot', () => raws(collector, 'node-b').join() === SYN_SENT);
    expect(log.find('a new connection replaces a dead one for this node')).toMatchObject({ node: 'node-b' });
    // Now the old socket's close arrives, late.
    old.end();
    await new Promise((r) => setTimeout(r, 300));
    expect(log.lines.filter((l) => l.msg === 'agent disconnected')).toEqual([]);
    expect(collector.nodes.get('node-b')).toMatchObject({ connected: true, lastSeq: 1 });
    expect(raws(collector, 'node-b')).toEqual([SYN_SENT]);
    // And the new connection's diffs keep landing.
    fresh.json({ v: 1, type: 'diff', seq: 2, time: Date.now(), changes: [{ source: 'conntrack', added: [rOther], removed: [], changed: [], refreshed: [] }], status: [] });
    await waitFor('the new connection\'s diff', () => collector.nodes.get('node-b')?.lastSeq === 2);
    expect(raws(collector, 'node-b')).toEqual([SYN_SENT, OTHER].sort());
  });

  it('cuts a half-open socket within the liveness limit, and takes the node\'s next connection with a fresh snapshot', async () => {
    const { collector, log, port } = await start();
    const halfOpen = await open(port);
    helloAndSnapshot(halfOpen, 'node-c', 1, [rTW]);
    await waitFor('the snapshot', () => collector.nodes.get('node-c')?.lastSeq === 1);
    // Answering pings and nothing else keeps a connection alive past the limit.
    await new Promise((r) => setTimeout(r, LIVENESS_MS + 300));
    expect(halfOpen.pings).toBeGreaterThan(3);
    expect(collector.nodes.get('node-c')?.connected).toBe(true);
    const silentAt = Date.now();
    halfOpen.goSilent();
    await waitFor('the cut', () => collector.nodes.get('node-c')?.connected === false, LIVENESS_MS * 3);
    const cutAfter = Date.now() - silentAt;
    expect(cutAfter).toBeLessThanOrEqual(LIVENESS_MS + PING_MS + 400);
    expect(log.find('agent connection silent past the liveness limit; closing it')).toMatchObject({ node: 'node-c' });

    // The node's next connection is a real agent; it starts over with a snapshot of what the node has now.
    const text = `${SYN_SENT}\n${OTHER}\n`;
    const agentLog = captureLog();
    const agent = new Agent({
      node: 'node-c',
      collectorUrl: `ws://127.0.0.1:${port}`,
      intervalMs: 100,
      token: TOKEN,
      version: 'test',
      state: new NodeState(createSamplers(), createRecordedIO(() => new Map([['/proc/net/nf_conntrack', text]]))),
      log: agentLog.log,
      readFacts: () => Promise.resolve({ hostname: 'node-c', kernel: '6.1', os: 'test', arch: 'x64', cpus: 1, memoryBytes: 1, interfaces: [] }),
    });
    agent.start();
    cleanups.push(() => agent.stop());
    await waitFor('the agent\'s snapshot', () => log.lines.filter((l) => l.msg === 'snapshot applied' && l.node === 'node-c').length === 2, 5_000);
    expect(collector.nodes.get('node-c')?.connected).toBe(true);
    expect(raws(collector, 'node-c')).toEqual(parsers.conntrack(text).records.map((r) => r.raw).sort());
  });

  it('a diff on a new connection before its snapshot is not applied: a new connection always starts over', async () => {
    const { collector, port } = await start();
    const a = await open(port);
    helloAndSnapshot(a, 'node-d', 1, [rTW]);
    await waitFor('the snapshot', () => collector.nodes.get('node-d')?.lastSeq === 1);
    a.end();
    await waitFor('the disconnect', () => collector.nodes.get('node-d')?.connected === false);
    const b = await open(port);
    b.json({ v: 1, type: 'hello', node: 'node-d', agentVersion: 'test', intervalMs: 1000, startedAt: Date.now() });
    b.json({ v: 1, type: 'diff', seq: 2, time: Date.now(), changes: [{ source: 'conntrack', added: [rOther], removed: [], changed: [], refreshed: [] }], status: [] });
    await waitFor('the reconnect', () => collector.nodes.get('node-d')?.connected === true);
    await new Promise((r) => setTimeout(r, 100));
    expect(collector.nodes.get('node-d')?.awaitingSnapshot).toBe(true);
    expect(raws(collector, 'node-d')).toEqual([TIME_WAIT]);
  });

  it('closes a socket that never says hello after the hello timeout, with 4408', async () => {
    const { collector, log, port } = await start();
    const mute = await open(port);
    const t0 = Date.now();
    await waitFor('the close', () => mute.closeCode !== null || mute.closed, HELLO_MS * 5);
    expect(mute.closeCode).toBe(CLOSE.noHello);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(HELLO_MS - 50);
    expect(log.find('closed an agent connection that sent no hello')).toBeDefined();
    expect(collector.nodes.size).toBe(0);
  });

  it('cuts a client that never finishes its headers (slowloris) soon after the headers timeout, not at Node\'s 30 s check', async () => {
    const { port } = await start(PING_MS, 500);
    const t0 = Date.now();
    const socket = connect(port, '127.0.0.1');
    socket.write('GET /api/nodes HTTP/1.1\r\nHost: x\r\nX-Slow: ');
    // One byte every 100 ms: never idle, never done.
    const drip = setInterval(() => socket.write('a'), 100);
    let answer = '';
    socket.on('data', (d: Buffer) => (answer += d.toString()));
    await new Promise((r) => socket.once('close', r));
    clearInterval(drip);
    expect(Date.now() - t0).toBeLessThan(3_000);
    expect(answer).toMatch(/^HTTP\/1\.1 40[08] /);
  });

  it('refuses an unauthenticated socket at the upgrade, and a wrong token too', async () => {
    const { collector, log, port } = await start();
    expect(await RawWs.open(port, null)).toEqual({ refused: 401 });
    expect(await RawWs.open(port, 'not-the-token')).toEqual({ refused: 401 });
    expect(await RawWs.open(port, TOKEN, { authScheme: 'Basic' })).toEqual({ refused: 401 });
    expect(log.lines.filter((l) => l.msg === 'refused an agent connection').map((l) => l.reason)).toEqual(['no token', 'wrong token', 'wrong token']);
    expect(collector.nodes.size).toBe(0);
  });
});
