// Issue 10's acceptance, against a real `conntrail collector` process: a
// seeded, time-bounded fuzz of malformed HTTP requests (over raw TCP) and
// malformed WebSocket frames (over a hand-spoken WebSocket) while a legit
// agent streams its node. The process must never exit, /healthz must answer
// every probe, and the legit node's records must equal what the project's own
// parser reads from the text its agent sampled. Then each crash the issue
// lists, as a regression test by name.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { NodeState } from '../../agent/node-state.ts';
import { parsers } from '../../agent/parsers.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { parseConntrack } from '../../agent/sources/conntrack.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import { Collector, type Session } from '../../collector/receive/collector.ts';
import { SNAPSHOT_CHUNK } from '../../contract/protocol.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';
import { httpBody, rawHttp, RawWs, requestBytes, startCollectorProcess, type CollectorProcess } from '../helpers/collector-process.ts';
import { rng } from '../helpers/rng.ts';

const SEED = Number(process.env.CONNTRAIL_FUZZ_SEED ?? 20_261_201);
/** The fuzz proper; the whole test (start, settle, compare) stays under 20 s. */
const FUZZ_MS = Number(process.env.CONNTRAIL_FUZZ_MS ?? 9_000);
const WORKERS = 4;

const fixtures = new URL('../fixtures/', import.meta.url).pathname;
const CONNTRACK_A = readFileSync(join(fixtures, 'conntrack/lab-proc-nf-conntrack.txt'), 'utf8');
const CONNTRACK_B = readFileSync(join(fixtures, 'conntrack/seed-002-nf-conntrack-syn-sent.txt'), 'utf8');
const IPTABLES = readFileSync(join(fixtures, 'iptables-save/lab-iptables-save-c.txt'), 'utf8');
const facts: NodeFacts = { hostname: 'legit-node', kernel: '6.1.0', os: 'test', arch: 'x64', cpus: 2, memoryBytes: 1, interfaces: [] };

type Rand = () => number;
const pick = <T,>(r: Rand, xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
const int = (r: Rand, lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));

const HOSTILE_CHARS = ['%', '%ZZ', '%E0%A4%A', '%2e%2e', '%2F', '%00', '%C0%AF', '/', '//', '[', ']', '?', '#', '..', '\u00e9', '\u202e', '\t', 'x', 'api', 'nodes', 'conntrack', '&', '=', '%%', '~'];
const BAD_REQUEST_LINES = [
  'GET //[ HTTP/1.1',
  'GET http://[ HTTP/1.1',
  'GET http://x/api/nodes HTTP/1.1',
  'GET https://127.0.0.1:1/api/nodes HTTP/1.1',
  'CONNECT 127.0.0.1:7470 HTTP/1.1',
  'GET 127.0.0.1:7470 HTTP/1.1',
  'OPTIONS * HTTP/1.1',
  'GET * HTTP/1.1',
  'GET /api/%ZZ HTTP/1.1',
  'GET /api/nodes/%E0%A4%A/conntrack HTTP/1.1',
  'GET /api/bundle?since=9999999999999h HTTP/1.1',
  'GET /api/bundle?since=-5m HTTP/1.1',
  'GET /api/bundle?since=%ZZ HTTP/1.1',
  'GET /api/nodes/..%2F..%2Fetc%2Fpasswd/conntrack HTTP/1.1',
  'GET /api/nodes/legit-node/%2e%2e HTTP/1.1',
  'GET /api/incidents/..%2F..%2Fx/bundle HTTP/1.1',
  'GET /api/nodes/legit-node/conntrack?format=%ZZ HTTP/1.1',
  'GET / HTTP/9.9',
  'GET /\u0000 HTTP/1.1',
  'G\u0000T / HTTP/1.1',
  'GET /api/nodes HTTP/1.1 extra',
  'GET',
  '',
];

interface Tally {
  statuses: Map<string, number>;
  fiveHundreds: string[];
}
const count = (t: Tally, key: string): void => void t.statuses.set(key, (t.statuses.get(key) ?? 0) + 1);

/** One HTTP attack; answers are tallied, a 5xx is remembered with what caused it. */
async function httpAttack(r: Rand, port: number, token: string, t: Tally, background: Promise<unknown>[]): Promise<void> {
  const kind = int(r, 0, 8);
  let bytes: string | Buffer;
  let what: string;
  switch (kind) {
    case 0: {
      const line = pick(r, BAD_REQUEST_LINES);
      what = line;
      bytes = `${line}\r\nHost: x\r\n${r() < 0.7 ? `Authorization: Bearer ${token}\r\n` : ''}Connection: close\r\n\r\n`;
      break;
    }
    case 1: {
      let target = '/';
      for (let i = int(r, 1, 12); i > 0; i--) target += pick(r, HOSTILE_CHARS);
      what = `GET ${target}`;
      bytes = requestBytes(target, r() < 0.8 ? token : null);
      break;
    }
    case 2:
      what = 'huge header';
      bytes = requestBytes('/api/nodes', token, `X-Huge: ${'a'.repeat(int(r, 20_000, 200_000))}\r\n`);
      break;
    case 3:
      what = 'many headers';
      bytes = requestBytes('/api/nodes', token, Array.from({ length: int(r, 200, 3_000) }, (_, i) => `X-${i}: ${i}\r\n`).join(''));
      break;
    case 4: {
      // Slowloris: headers that never finish, one byte now and then; left running in the background.
      what = 'slowloris';
      background.push(
        new Promise<void>((resolve) => {
          void rawHttp(port, 'GET /api/nodes HTTP/1.1\r\nHost: x\r\nX-Slow: ', 4_000).then(() => resolve());
        }),
      );
      return;
    }
    case 5:
      what = 'random bytes';
      bytes = Buffer.from(Array.from({ length: int(r, 1, 4_000) }, () => int(r, 0, 255)));
      break;
    case 6:
      what = 'since=9999999999999h';
      bytes = requestBytes(pick(r, ['/api/bundle?since=9999999999999h', '/api/bundle?since=1e308ms', '/api/bundle?since=NaNm', '/api/bundle?since=2ms']), token);
      break;
    case 7:
      what = 'lying content-length';
      bytes = `POST /api/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${token}\r\nContent-Length: ${pick(r, ['99999999999', '-1', 'abc', '5'])}\r\n\r\nab`;
      break;
    default:
      what = 'records with a hostile query';
      bytes = requestBytes(`/api/nodes/legit-node/${pick(r, ['conntrack', 'iptables', 'bogus', '%2e%2e', 'conntrack%00'])}?format=${pick(r, ['ndjson', 'json', '%ZZ', ''])}&x=${pick(r, HOSTILE_CHARS)}`, token);
  }
  const res = await rawHttp(port, bytes, 2_500);
  count(t, `http ${res.status ?? 'closed'}`);
  if (res.status !== null && res.status >= 500) t.fiveHundreds.push(`${what}: ${res.text.slice(0, 300)}`);
}

const HOSTILE_VALUES: readonly unknown[] = [1e308, -1, 'NaN', '1e308', null, [], {}, true, -0, 2 ** 53 + 1, 'x'.repeat(100_000), [1, 2, 3], { $gt: 1 }, '', '../../x'];

/** Frames an agent could send, valid, for mutating. */
function templates(node: string, now: number): Record<string, unknown>[] {
  const record = parseConntrack(CONNTRACK_B.split('\n')[0] ?? '').records[0];
  return [
    { v: 1, type: 'hello', node, agentVersion: 'fuzz', intervalMs: 1000, startedAt: now },
    { v: 1, type: 'snapshot', seq: 1, time: now, source: 'conntrack', part: 0, parts: 1, records: [record] },
    { v: 1, type: 'snapshot-end', seq: 1, time: now, status: [] },
    { v: 1, type: 'diff', seq: 2, time: now, changes: [{ source: 'conntrack', added: [record], removed: [], changed: [], refreshed: [] }], status: [] },
    { v: 1, type: 'facts', facts },
    { v: 1, type: 'capture-lines', id: 'x', tool: 'tcpdump', lines: ['a'] },
    { v: 1, type: 'capture-end', id: 'x', tool: 'tcpdump', error: null },
  ];
}

function mutate(r: Rand, frame: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...frame };
  const keys = Object.keys(out);
  for (let i = int(r, 1, 3); i > 0; i--) {
    const k = r() < 0.9 ? pick(r, keys) : pick(r, ['extra', '__proto__', 'constructor']);
    out[k] = pick(r, HOSTILE_VALUES);
  }
  return out;
}

/** The WebSocket attacks, each by name: the first pass runs every one once, then they are picked at random. */
const WS_ATTACKS: readonly { name: string; run(ws: RawWs, r: Rand, node: string, now: number): Promise<void> | void }[] = [
  { name: 'not JSON', run: (ws, r) => ws.send(pick(r, ['{', 'null', '[]', '"hello"', '{"v":1,"type":"hello"', '\u0000\u0001', 'x'.repeat(int(r, 1, 50_000))])) },
  { name: 'frames before hello', run: (ws, _r, _n, now) => ws.json({ v: 1, type: 'diff', seq: 1, time: now, changes: [], status: [] }) },
  { name: 'binary frame', run: (ws, r) => ws.frame(2, Buffer.from(Array.from({ length: int(r, 1, 2_000) }, () => int(r, 0, 255)))) },
  { name: 'hello with ../../x', run: (ws, r, _n, now) => ws.json({ v: 1, type: 'hello', node: pick(r, ['../../x', '../../../x/pwned', 'a/b', '..', '%2e%2e', 'x'.repeat(300), 'nöde', 'UPPER', '']), agentVersion: 'x', intervalMs: 1000, startedAt: now }) },
  { name: 'hello for the legit node', run: (ws, _r, _n, now) => ws.json({ v: 1, type: 'hello', node: 'legit-node', agentVersion: 'forger', intervalMs: 1000, startedAt: now }) },
  {
    name: 'hello for another node on the same connection',
    run: (ws, _r, node, now) => {
      ws.json({ v: 1, type: 'hello', node, agentVersion: 'x', intervalMs: 1000, startedAt: now });
      ws.json({ v: 1, type: 'hello', node: `${node}-other`, agentVersion: 'x', intervalMs: 1000, startedAt: now });
    },
  },
  {
    name: 'times 1e308, -1, NaN-as-string and outside the window',
    run: (ws, r, node, now) => {
      ws.json({ v: 1, type: 'hello', node, agentVersion: 'x', intervalMs: 1000, startedAt: now });
      ws.json({ v: 1, type: 'snapshot-end', seq: 1, time: pick(r, [1e308, -1, 'NaN', Number.MAX_VALUE]), status: [] });
      ws.json({ v: 1, type: 'snapshot-end', seq: 1, time: now - 5 * 3_600_000, status: [] });
    },
  },
  {
    name: 'seq going backwards',
    run: (ws, _r, node, now) => {
      ws.json({ v: 1, type: 'hello', node, agentVersion: 'x', intervalMs: 1000, startedAt: now });
      ws.json({ v: 1, type: 'snapshot-end', seq: 10, time: now, status: [] });
      ws.json({ v: 1, type: 'diff', seq: 11, time: now, changes: [], status: [] });
      ws.json({ v: 1, type: 'diff', seq: 4, time: now, changes: [], status: [] });
    },
  },
  {
    name: 'snapshot that never ends',
    run: (ws, r, node, now) => {
      ws.json({ v: 1, type: 'hello', node, agentVersion: 'x', intervalMs: 1000, startedAt: now });
      const records = parseConntrack(CONNTRACK_A).records;
      for (let part = 0; part < int(r, 1, 20); part++) ws.json({ v: 1, type: 'snapshot', seq: 3, time: now, source: 'conntrack', part, parts: 100, records });
    },
  },
  {
    name: 'parts beyond bounds',
    run: (ws, r, node, now) => {
      ws.json({ v: 1, type: 'hello', node, agentVersion: 'x', intervalMs: 1000, startedAt: now });
      const one = parseConntrack(CONNTRACK_B).records.slice(0, 1);
      ws.json({ v: 1, type: 'snapshot', seq: 1, time: now, source: 'conntrack', part: 0, parts: pick(r, [10_001, 1e9, 0, -1]), records: one });
      ws.json({ v: 1, type: 'snapshot', seq: 1, time: now, source: 'conntrack', part: 7, parts: 3, records: one });
      ws.json({ v: 1, type: 'snapshot', seq: 1, time: now, source: 'conntrack', part: 0, parts: 1, records: Array.from({ length: SNAPSHOT_CHUNK + 1 }, () => one[0]) });
    },
  },
  { name: 'huge strings', run: (ws, r, node, now) => ws.json({ v: 1, type: 'hello', node, agentVersion: 'v'.repeat(int(r, 129, 2_000_000)), intervalMs: 1000, startedAt: now }) },
  {
    name: 'wrong types',
    run: (ws, r, node, now) => {
      const ts = templates(node, now);
      ws.json(ts[0]);
      for (let i = int(r, 1, 10); i > 0; i--) ws.json(mutate(r, pick(r, ts)));
    },
  },
  {
    name: 'broken WebSocket framing',
    run: (ws, r) => {
      const k = int(r, 0, 4);
      if (k === 0) ws.frame(1, '{"v":1}', { mask: false });
      else if (k === 1) ws.frame(int(r, 3, 7), 'reserved opcode');
      else if (k === 2) ws.frame(1, 'rsv', { rsv: int(r, 1, 7) });
      else if (k === 3) ws.frame(9, Buffer.alloc(200));
      else ws.socket.write(Buffer.from(Array.from({ length: int(r, 1, 500) }, () => int(r, 0, 255))));
    },
  },
];

async function wsAttack(port: number, token: string, r: Rand, attack: (typeof WS_ATTACKS)[number], node: string, t: Tally): Promise<void> {
  const ws = await RawWs.open(port, token, r() < 0.2 ? { authScheme: pick(r, ['bearer', 'BEARER', 'Bearer']) } : {});
  if (!(ws instanceof RawWs)) {
    count(t, `ws refused ${ws.refused}`);
    return;
  }
  try {
    await attack.run(ws, r, node, Date.now());
  } catch (err) {
    t.fiveHundreds.push(`ws attack ${attack.name} threw in the test: ${(err as Error).message}`);
  }
  await new Promise((res) => setTimeout(res, int(r, 20, 200)));
  count(t, `ws ${attack.name} closed=${ws.closeCode ?? (ws.closed ? 'abrupt' : 'open')}`);
  ws.end();
}

async function api<T>(port: number, path: string, token: string): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${token}` }, signal: AbortSignal.timeout(5_000) });
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

type NodesBody = { nodes: { node: string; connected: boolean; rejectedFrames: number; resyncs: number }[]; collector: { rejectedFrames: Record<string, number>; badRequests: number } };
type RecordsBody = { node: string; source: string; records: { raw: string }[] };
const byRaw = <T extends { raw: string }>(xs: readonly T[]): T[] => [...xs].sort((a, b) => a.raw.localeCompare(b.raw));

describe('the collector process under fuzz', { timeout: 20_000 }, () => {
  let proc: CollectorProcess;
  let agent: Agent;
  const agentLog = captureLog();
  let recording = new Map<string, string>();
  beforeAll(async () => {
    proc = await startCollectorProcess();
    recording = new Map([
      ['/proc/net/nf_conntrack', CONNTRACK_A],
      ['iptables-nft-save -c', IPTABLES],
      ['/proc/sys/kernel/osrelease', '6.1.0\n'],
    ]);
    agent = new Agent({
      node: 'legit-node',
      collectorUrl: `ws://127.0.0.1:${proc.port}`,
      intervalMs: 200,
      token: proc.token,
      version: 'test',
      state: new NodeState(createSamplers(), createRecordedIO(() => recording)),
      log: agentLog.log,
      readFacts: () => Promise.resolve(facts),
    });
    agent.start();
    await waitFor('the legit snapshot', () => proc.lines.some((l) => l.msg === 'snapshot applied' && l.node === 'legit-node'), 10_000);
  });
  afterAll(async () => {
    await agent.stop();
    await proc.stop();
  });

  it(`never exits, answers /healthz at every probe, and keeps the legit node as its agent sent it (seed ${SEED})`, async () => {
    console.log(`fuzz seed ${SEED} (CONNTRAIL_FUZZ_SEED=${SEED} replays it), ${FUZZ_MS} ms, ${WORKERS} workers`);
    const tally: Tally = { statuses: new Map(), fiveHundreds: [] };
    const deadline = Date.now() + FUZZ_MS;
    const probes: { ok: boolean; ms: number; error?: string }[] = [];
    const prober = (async () => {
      while (Date.now() < deadline) {
        const t0 = Date.now();
        try {
          const res = await fetch(`http://127.0.0.1:${proc.port}/healthz`, { signal: AbortSignal.timeout(2_000) });
          probes.push({ ok: res.status === 200 && ((await res.json()) as { ok: boolean }).ok, ms: Date.now() - t0 });
        } catch (err) {
          probes.push({ ok: false, ms: Date.now() - t0, error: (err as Error).message });
        }
        await new Promise((res) => setTimeout(res, 50));
      }
    })();
    // The legit node changes under the fuzz: whole entries come and go, so each change is a diff.
    const changer = (async () => {
      let flip = false;
      while (Date.now() < deadline) {
        flip = !flip;
        recording = new Map(recording).set('/proc/net/nf_conntrack', flip ? `${CONNTRACK_A}${CONNTRACK_B}` : CONNTRACK_A);
        await new Promise((res) => setTimeout(res, 700));
      }
    })();
    const background: Promise<unknown>[] = [];
    const workers = Array.from({ length: WORKERS }, async (_, w) => {
      const r = rng(SEED + w);
      let i = 0;
      // Every WebSocket attack once, spread over the workers, then at random.
      for (let a = w; a < WS_ATTACKS.length; a += WORKERS) await wsAttack(proc.port, proc.token, r, WS_ATTACKS[a] as (typeof WS_ATTACKS)[number], `fuzz-${w}-${i++}`, tally);
      while (Date.now() < deadline) {
        if (r() < 0.5) await httpAttack(r, proc.port, proc.token, tally, background);
        else await wsAttack(proc.port, proc.token, r, pick(r, WS_ATTACKS), `fuzz-${w}-${i++}`, tally);
      }
    });
    await Promise.all([...workers, prober, changer]);
    await Promise.all(background);

    expect(proc.exited(), proc.output().slice(-2_000)).toBe(false);
    expect(tally.fiveHundreds).toEqual([]);
    expect(probes.length).toBeGreaterThan(20);
    expect(probes.filter((p) => !p.ok)).toEqual([]);

    // Settle on one picture and compare it with the parser's own reading of the same text.
    recording = new Map(recording).set('/proc/net/nf_conntrack', `${CONNTRACK_A}${CONNTRACK_B}`);
    const expected = byRaw(parsers.conntrack(`${CONNTRACK_A}${CONNTRACK_B}`).records);
    const got = await waitFor('the legit node at its final state', async () => {
      const b = await api<RecordsBody>(proc.port, '/api/nodes/legit-node/conntrack', proc.token);
      return b.records.length === expected.length ? b : null;
    }, 5_000);
    expect(byRaw(got.records)).toEqual(expected);
    const rules = await api<RecordsBody>(proc.port, '/api/nodes/legit-node/iptables', proc.token);
    // The sampler stamps which backend's save tool it read: it was recorded as iptables-nft-save.
    expect(byRaw(rules.records)).toEqual(byRaw(parsers.iptables(IPTABLES).records.map((r) => ({ ...r, backend: 'nft' }))));

    const nodes = await api<NodesBody>(proc.port, '/api/nodes', proc.token);
    const legit = nodes.nodes.find((n) => n.node === 'legit-node');
    expect(legit).toMatchObject({ connected: true, rejectedFrames: 0, resyncs: 0 });
    // Every class the fuzz sent is counted under its own reason.
    for (const reason of ['malformed', 'before-hello', 'binary', 'duplicate-node', 'wrong-node', 'implausible-time', 'replayed-seq']) expect(nodes.collector.rejectedFrames[reason], reason).toBeGreaterThan(0);
    expect(nodes.collector.badRequests).toBeGreaterThan(0);
    // The real agent never lost its connection to a forger or to the noise.
    expect(agentLog.lines.filter((l) => l.msg === 'collector connection closed; reconnecting')).toEqual([]);
    expect(proc.lines.filter((l) => Number(l.level) >= 60)).toEqual([]);
    console.log(`fuzz answers: ${JSON.stringify(Object.fromEntries([...tally.statuses].sort()))}; healthz probes ${probes.length}, slowest ${Math.max(...probes.map((p) => p.ms))} ms`);
  });
});

describe('issue 10 regressions, against a real collector process', { timeout: 20_000 }, () => {
  let proc: CollectorProcess;
  beforeAll(async () => {
    proc = await startCollectorProcess({ token: 'regress-token' });
  });
  afterAll(async () => {
    await proc.stop();
  });
  const alive = async (): Promise<void> => {
    expect(proc.exited()).toBe(false);
    const res = await fetch(`http://127.0.0.1:${proc.port}/healthz`);
    expect(res.status).toBe(200);
  };
  const raw = async (line: string): Promise<{ status: number | null; body: string }> => {
    const res = await rawHttp(proc.port, `${line}\r\nHost: x\r\nAuthorization: Bearer ${proc.token}\r\nConnection: close\r\n\r\n`);
    return { status: res.status, body: httpBody(res.text) };
  };

  it('GET //[ HTTP/1.1 is a 400 with a reason, and the process stays up', async () => {
    expect(await raw('GET //[ HTTP/1.1')).toEqual({ status: 400, body: JSON.stringify({ error: 'request target: expected an absolute path (/api/…)' }) });
    await alive();
  });

  it('GET http://[ HTTP/1.1 is a 400 with a reason, and the process stays up', async () => {
    expect(await raw('GET http://[ HTTP/1.1')).toEqual({ status: 400, body: JSON.stringify({ error: 'request target: expected an absolute path (/api/…)' }) });
    await alive();
  });

  it('/api/%ZZ is a 400 naming the bad percent-escape', async () => {
    expect(await raw('GET /api/%ZZ HTTP/1.1')).toEqual({ status: 400, body: JSON.stringify({ error: 'request target: bad percent-escape in the path' }) });
    await alive();
  });

  it('/api/nodes/%E0%A4%A/conntrack is a 400 naming the bad percent-escape', async () => {
    expect(await raw('GET /api/nodes/%E0%A4%A/conntrack HTTP/1.1')).toEqual({ status: 400, body: JSON.stringify({ error: 'request target: bad percent-escape in the path' }) });
    await alive();
  });

  it('snapshot-end with time: 1e308 is refused at decode, and GET /api/nodes still answers', async () => {
    const ws = await RawWs.open(proc.port, proc.token);
    if (!(ws instanceof RawWs)) throw new Error(`refused ${ws.refused}`);
    const now = Date.now();
    ws.json({ v: 1, type: 'hello', node: 'far-future', agentVersion: 'x', intervalMs: 1000, startedAt: now });
    ws.send('{"v":1,"type":"snapshot-end","seq":1,"time":1e308,"status":[]}');
    await waitFor('the rejection', () => proc.lines.find((l) => l.msg === 'rejected a frame (malformed)' && l.node === 'far-future'));
    const res = await fetch(`http://127.0.0.1:${proc.port}/api/nodes`, { headers: { authorization: `Bearer ${proc.token}` } });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { nodes: { node: string; lastSeq: number | null; lastSampleTime: string | null }[] };
    expect(body.nodes.find((n) => n.node === 'far-future')).toMatchObject({ lastSeq: null, lastSampleTime: null });
    ws.end();
    await alive();
  });

  it('since=9999999999999h is a 400, not a 500', async () => {
    const res = await raw('GET /api/bundle?since=9999999999999h HTTP/1.1');
    expect(res.status).toBe(400);
    expect(JSON.parse(res.body)).toEqual({ error: expect.stringMatching(/^since: expected a duration/) });
    await alive();
  });

  it('a token in an upgrade\'s query string is never logged, refused or accepted', async () => {
    const refused = await RawWs.open(proc.port, null, { path: '/?token=SECRET-IN-QUERY-1' });
    expect(refused).toEqual({ refused: 401 });
    const accepted = await RawWs.open(proc.port, proc.token, { path: '/agent?access_token=SECRET-IN-QUERY-2' });
    if (!(accepted instanceof RawWs)) throw new Error(`refused ${accepted.refused}`);
    accepted.json({ v: 1, type: 'hello', node: 'query-token', agentVersion: 'x', intervalMs: 1000, startedAt: Date.now() });
    await waitFor('the accepted agent', () => proc.lines.find((l) => l.msg === 'agent connected' && l.node === 'query-token'));
    accepted.end();
    await waitFor('the disconnect', () => proc.lines.find((l) => l.msg === 'agent disconnected' && l.node === 'query-token'));
    await waitFor('the refusal line', () => proc.lines.find((l) => l.msg === 'refused an agent connection'));
    expect(proc.output()).not.toContain('SECRET-IN-QUERY');
    expect(proc.output()).not.toContain(proc.token);
  });

  it('a lowercase bearer scheme is accepted, on the API and on an agent upgrade', async () => {
    const res = await fetch(`http://127.0.0.1:${proc.port}/api/nodes`, { headers: { authorization: `bearer ${proc.token}` } });
    expect(res.status).toBe(200);
    const ws = await RawWs.open(proc.port, proc.token, { authScheme: 'bearer' });
    expect(ws).toBeInstanceOf(RawWs);
    if (ws instanceof RawWs) ws.end();
  });
});

describe('GET /api/nodes/:node/conntrack at a million records', { timeout: 120_000 }, () => {
  const ENTRIES = 1_000_000;
  const line = (i: number) =>
    `ipv4     2 tcp      6 431999 ESTABLISHED src=10.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255} dst=10.250.0.1 sport=${1024 + (i % 60000)} dport=80 src=10.250.0.1 dst=10.${1 + (i >> 16)}.${(i >> 8) & 255}.${i & 255} sport=80 dport=${1024 + (i % 60000)} [ASSURED] mark=0 zone=0 use=2`;
  let server: CollectorServer;
  let port = 0;
  let raws: string[] = [];
  beforeAll(async () => {
    const { records, problems } = parseConntrack(Array.from({ length: ENTRIES }, (_, i) => line(i)).join('\n'));
    expect(problems).toEqual([]);
    raws = records.map((r) => r.raw);
    const log = captureLog();
    const collector = new Collector({ log: log.log });
    const session: Session = { node: null, remote: 'test', send: () => undefined };
    const now = Date.now();
    collector.accept(session, { v: 1, type: 'hello', node: 'big', agentVersion: 'test', intervalMs: 1000, startedAt: now });
    const parts = Math.ceil(ENTRIES / SNAPSHOT_CHUNK);
    for (let part = 0; part < parts; part++) collector.accept(session, { v: 1, type: 'snapshot', seq: 1, time: now, source: 'conntrack', part, parts, records: records.slice(part * SNAPSHOT_CHUNK, (part + 1) * SNAPSHOT_CHUNK) });
    collector.accept(session, { v: 1, type: 'snapshot-end', seq: 1, time: now, status: [] });
    expect(collector.nodes.get('big')?.recordMap('conntrack').size).toBe(ENTRIES);
    server = new CollectorServer({ collector, log: log.log, token: 't' });
    const addr = await server.listen({ host: '127.0.0.1', port: 0 });
    if (typeof addr === 'string') throw new Error('expected a TCP address');
    port = addr.port;
  }, 60_000);
  afterAll(async () => {
    await server.close();
  });

  /** Reads a body as it streams, handing each complete line (NDJSON) or each top-level element of `records` (JSON) to `each`. */
  async function stream(path: string, ndjson: boolean, each: (text: string) => void): Promise<{ status: number; head: string }> {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: 'Bearer t' } });
    const decoder = new TextDecoder();
    let head = '';
    let buf = '';
    // JSON: a tiny scanner for `{…,"records":[ e, e, … ]}` that tracks strings and depth, so no one string holds the body.
    let depth = 0;
    let inString = false;
    let escaped = false;
    let element = '';
    let inRecords = false;
    for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
      const text = decoder.decode(chunk, { stream: true });
      if (ndjson) {
        buf += text;
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const l = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (head === '') head = l;
          else each(l);
        }
        continue;
      }
      let start = 0;
      for (let i = 0; i < text.length; i++) {
        const c = text[i];
        if (inString) {
          if (escaped) escaped = false;
          else if (c === '\\') escaped = true;
          else if (c === '"') inString = false;
          continue;
        }
        if (c === '"') inString = true;
        else if (c === '{' || c === '[') {
          depth++;
          // The one array directly in the top object is `records`.
          if (depth === 2 && c === '[' && !inRecords) {
            head += text.slice(start, i + 1);
            start = i + 1;
            inRecords = true;
          }
        } else if (c === '}' || c === ']') {
          if (depth === 2 && inRecords) {
            element += text.slice(start, i);
            if (element.trim() !== '') each(element);
            element = '';
            start = i;
            inRecords = false;
          }
          depth--;
        } else if (c === ',' && depth === 2 && inRecords) {
          element += text.slice(start, i);
          each(element);
          element = '';
          start = i + 1;
        }
      }
      if (inRecords) element += text.slice(start);
      else head += text.slice(start);
    }
    return { status: res.status, head };
  }

  it('streams a million records as JSON that parses, all of them, in order', async () => {
    let n = 0;
    let mismatches = 0;
    const { status, head } = await stream('/api/nodes/big/conntrack', false, (text) => {
      const r = JSON.parse(text) as { raw: string };
      if (r.raw !== raws[n]) mismatches++;
      n++;
    });
    expect(status).toBe(200);
    // What is left once the records are taken out: the head, and the array's brackets closing.
    expect(JSON.parse(head)).toEqual({ node: 'big', source: 'conntrack', status: null, records: [] });
    expect(n).toBe(ENTRIES);
    expect(mismatches).toBe(0);
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
  });

  it('streams the same million as NDJSON with ?format=ndjson', async () => {
    let n = 0;
    let mismatches = 0;
    const { status, head } = await stream('/api/nodes/big/conntrack?format=ndjson', true, (text) => {
      if ((JSON.parse(text) as { raw: string }).raw !== raws[n]) mismatches++;
      n++;
    });
    expect(status).toBe(200);
    expect(JSON.parse(head)).toMatchObject({ node: 'big', source: 'conntrack' });
    expect(n).toBe(ENTRIES);
    expect(mismatches).toBe(0);
  });
});
