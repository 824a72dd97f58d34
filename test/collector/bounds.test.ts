// Every bound the collector enforces, hit on purpose: each says so once in
// the log (however often it is hit) and is listed in /api/nodes, under the
// node it is about or under the collector. And nodes that left longer ago
// than the history window are dropped, by a sweep the real process runs.
import { afterEach, describe, expect, it } from 'vitest';
import { parseConntrack } from '../../agent/sources/conntrack.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import type { FindingLine } from '../../collector/detection/aggregate.ts';
import { BundleService } from '../../collector/incidents/bundle-service.ts';
import { MAX_CAPTURE_LINES, MAX_CAPTURES } from '../../collector/incidents/captures.ts';
import { MAX_INCIDENT_FINDINGS, MAX_INCIDENTS } from '../../collector/incidents/incidents.ts';
import { CLOSE, Collector, type CollectorOptions, type Session } from '../../collector/receive/collector.ts';
import { MAX_STAGING_MS } from '../../collector/state/node-view.ts';
import type { AgentMessage, CollectorMessage } from '../../contract/protocol.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';
import { RawWs, startCollectorProcess } from '../helpers/collector-process.ts';

const line = (i: number) =>
  `ipv4     2 tcp      6 431999 ESTABLISHED src=10.1.0.${i} dst=10.250.0.1 sport=${1024 + i} dport=80 src=10.250.0.1 dst=10.1.0.${i} sport=80 dport=${1024 + i} [ASSURED] mark=0 zone=0 use=2`;
const records = (n: number, from = 0) => parseConntrack(Array.from({ length: n }, (_, i) => line(from + i)).join('\n')).records;

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Rig {
  collector: Collector;
  bundles: BundleService;
  log: ReturnType<typeof captureLog>;
  clock: { now: number };
  /** A connection in-process: what it was sent, and whether it was closed. */
  session(): Session & { sent: CollectorMessage[]; closedWith: number | null };
  nodes(): Promise<NodesBody>;
}
type BoundBody = { bound: string; subject: string; limit: number; hits: number; action: string };
type NodesBody = { nodes: { node: string; bounds: BoundBody[]; sourcesOverBound: string[] }[]; collector: { bounds: BoundBody[] } };

async function rig(options: Partial<CollectorOptions> = {}): Promise<Rig> {
  const log = captureLog();
  const clock = { now: Date.now() };
  const collector = new Collector({ log: log.log, now: () => clock.now, ...options });
  const bundles = new BundleService(collector, log.log, { version: 'test', now: () => clock.now, ...(options.historyMs === undefined ? {} : { windowMs: options.historyMs }) });
  const server = new CollectorServer({ collector, log: log.log, token: 't', bundles });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  if (typeof addr === 'string') throw new Error('expected a TCP address');
  cleanups.push(() => server.close());
  return {
    collector,
    bundles,
    log,
    clock,
    session() {
      const s: Session & { sent: CollectorMessage[]; closedWith: number | null } = {
        node: null,
        remote: 'test',
        sent: [],
        closedWith: null,
        send: (m) => void s.sent.push(m),
        close: (code) => void (s.closedWith = code),
        alive: () => s.closedWith === null,
      };
      return s;
    },
    async nodes() {
      const res = await fetch(`http://127.0.0.1:${addr.port}/api/nodes`, { headers: { authorization: 'Bearer t' } });
      return (await res.json()) as NodesBody;
    },
  };
}

const hello = (node: string, now: number): AgentMessage => ({ v: 1, type: 'hello', node, agentVersion: 'test', intervalMs: 1000, startedAt: now });
function snapshot(c: Collector, s: Session, seq: number, now: number, recs: ReturnType<typeof records>): void {
  c.accept(s, { v: 1, type: 'snapshot', seq, time: now, source: 'conntrack', part: 0, parts: 1, records: recs });
  c.accept(s, { v: 1, type: 'snapshot-end', seq, time: now, status: [] });
}
const boundLines = (r: Rig, bound: string) => r.log.lines.filter((l) => l.msg === `bound hit: ${bound}`);

function errorLine(service: string, time: number, node = 'node-a'): FindingLine {
  const t = new Date(time).toISOString();
  return { finding: 'port-reuse-to-removed-endpoint', severity: 'error', node, service, tuple: null, endpoint: null, summary: 's', evidence: [], advice: 'a', time, count: 1, firstSeen: t, lastSeen: t };
}

describe('bounds, each logged once and listed in /api/nodes', { timeout: 20_000 }, () => {
  it('records per source: a snapshot or a diff past the bound drops the source whole, until a snapshot fits', async () => {
    const r = await rig({ maxRecords: (source) => (source === 'conntrack' ? 3 : 200_000) });
    const s = r.session();
    const now = r.clock.now;
    r.collector.accept(s, hello('node-a', now));
    snapshot(r.collector, s, 1, now, records(4));
    const view = r.collector.nodes.get('node-a');
    expect(view?.recordMap('conntrack').size).toBe(0);
    expect(view?.overBound).toEqual(['conntrack']);
    snapshot(r.collector, s, 2, now + 1, records(5));
    // Back under: held again.
    snapshot(r.collector, s, 3, now + 2, records(2));
    expect(view?.recordMap('conntrack').size).toBe(2);
    expect(view?.overBound).toEqual([]);
    // A diff that takes it over drops it again.
    r.collector.accept(s, { v: 1, type: 'diff', seq: 4, time: now + 3, changes: [{ source: 'conntrack', added: records(2, 10), removed: [], changed: [], refreshed: [] }], status: [] });
    expect(view?.recordMap('conntrack').size).toBe(0);

    expect(boundLines(r, 'records.conntrack')).toHaveLength(1);
    expect(boundLines(r, 'records.conntrack')[0]).toMatchObject({ subject: 'node-a', limit: 3 });
    const listed = (await r.nodes()).nodes.find((n) => n.node === 'node-a');
    expect(listed?.sourcesOverBound).toEqual(['conntrack']);
    expect(listed?.bounds).toEqual([expect.objectContaining({ bound: 'records.conntrack', subject: 'node-a', limit: 3, hits: 3 })]);
  });

  it('staged snapshot age: a snapshot whose parts stop coming is dropped and asked for again, by the next part or by the sweep', async () => {
    const r = await rig();
    const a = r.session();
    const b = r.session();
    const t0 = r.clock.now;
    r.collector.accept(a, hello('node-a', t0));
    r.collector.accept(b, hello('node-b', t0));
    for (const s of [a, b]) r.collector.accept(s, { v: 1, type: 'snapshot', seq: 1, time: t0, source: 'conntrack', part: 0, parts: 3, records: records(2) });
    r.clock.now = t0 + MAX_STAGING_MS + 1_000;
    // node-a: its next part arrives too late.
    r.collector.accept(a, { v: 1, type: 'snapshot', seq: 1, time: t0, source: 'conntrack', part: 1, parts: 3, records: records(2, 2) });
    expect(a.sent).toEqual([expect.objectContaining({ type: 'resync', reason: expect.stringMatching(/took longer than 60 s/) })]);
    // node-b: nothing more comes; the sweep lets the parts go.
    r.collector.sweep();
    expect(b.sent).toEqual([expect.objectContaining({ type: 'resync', reason: expect.stringMatching(/took longer than 60 s/) })]);
    r.collector.sweep();
    expect(b.sent).toHaveLength(1);
    // A fresh snapshot is taken as usual.
    snapshot(r.collector, b, 2, r.clock.now, records(2));
    expect(r.collector.nodes.get('node-b')?.recordMap('conntrack').size).toBe(2);

    expect(boundLines(r, 'snapshot.age').map((l) => l.subject).sort()).toEqual(['node-a', 'node-b']);
    const listed = await r.nodes();
    for (const node of ['node-a', 'node-b']) expect(listed.nodes.find((n) => n.node === node)?.bounds).toEqual([expect.objectContaining({ bound: 'snapshot.age', limit: MAX_STAGING_MS, hits: 1 })]);
  });

  it('node count: a node past maxNodes is refused with 4429 until one has left the window, which a hello at the cap expires', async () => {
    const r = await rig({ maxNodes: 2, historyMs: 60_000 });
    const t0 = r.clock.now;
    const [a, b, c, d] = [r.session(), r.session(), r.session(), r.session()];
    r.collector.accept(a, hello('node-a', t0));
    r.collector.accept(b, hello('node-b', t0));
    r.collector.accept(c, hello('node-c', t0));
    r.collector.accept(d, hello('node-d', t0));
    expect([c.closedWith, d.closedWith]).toEqual([CLOSE.tooMany, CLOSE.tooMany]);
    expect([...r.collector.nodes.keys()]).toEqual(['node-a', 'node-b']);
    expect(boundLines(r, 'nodes')).toHaveLength(1);
    expect((await r.nodes()).collector.bounds).toEqual([expect.objectContaining({ bound: 'nodes', subject: 'collector', limit: 2, hits: 2 })]);

    // node-a leaves; once it has been gone longer than the window, a new hello at the cap makes room.
    r.collector.disconnect(a, 1001);
    r.clock.now = t0 + 61_000;
    const e = r.session();
    r.collector.accept(e, hello('node-e', r.clock.now));
    expect(e.closedWith).toBeNull();
    expect([...r.collector.nodes.keys()].sort()).toEqual(['node-b', 'node-e']);
  });

  it('incidents, finding lines per incident, captures and capture lines', async () => {
    const r = await rig();
    const t0 = r.clock.now;
    for (let i = 0; i <= MAX_INCIDENTS; i++) r.bundles.incidents.add(errorLine(`ns/svc-${i}`, t0));
    expect(r.bundles.incidents.list()).toHaveLength(MAX_INCIDENTS);
    const newest = r.bundles.incidents.list().at(-1);
    for (let i = 0; i <= MAX_INCIDENT_FINDINGS; i++) r.bundles.incidents.add(errorLine(`ns/svc-${MAX_INCIDENTS}`, t0 + 1));
    expect(newest?.findings).toHaveLength(MAX_INCIDENT_FINDINGS);
    for (let i = 0; i <= MAX_CAPTURES; i++) r.bundles.captures.open(`cap-${i}`, t0);
    expect(r.bundles.captures.size).toBe(MAX_CAPTURES);

    // Capture lines arrive as frames from the node's connection.
    const s = r.session();
    r.collector.accept(s, hello('node-a', t0));
    const lines = Array.from({ length: 10_000 }, (_, i) => `line ${i}`);
    for (let i = 0; i < 6; i++) r.collector.accept(s, { v: 1, type: 'capture-lines', id: `cap-${MAX_CAPTURES}`, tool: 'tcpdump', lines });
    expect(r.bundles.captures.of(`cap-${MAX_CAPTURES}`).lines.get('node-a')?.get('tcpdump')?.lines).toHaveLength(MAX_CAPTURE_LINES);

    for (const bound of ['incidents', 'incident.findings', 'captures', 'capture.lines']) expect(boundLines(r, bound), bound).toHaveLength(1);
    const listed = await r.nodes();
    expect(listed.collector.bounds.map((b) => [b.bound, b.limit, b.hits]).sort()).toEqual(
      [
        ['captures', MAX_CAPTURES, 1],
        ['incident.findings', MAX_INCIDENT_FINDINGS, 2],
        ['incidents', MAX_INCIDENTS, 1],
      ].sort(),
    );
    expect(listed.nodes.find((n) => n.node === 'node-a')?.bounds).toEqual([expect.objectContaining({ bound: 'capture.lines', limit: MAX_CAPTURE_LINES, hits: 1 })]);
  });

  it('expire drops a node disconnected longer than the history window, with its view, timeline and bounds; a connected one stays', async () => {
    const r = await rig({ historyMs: 60_000, maxRecords: (source) => (source === 'conntrack' ? 1 : 10) });
    const t0 = r.clock.now;
    const gone = r.session();
    const stays = r.session();
    r.collector.accept(gone, hello('node-gone', t0));
    snapshot(r.collector, gone, 1, t0, records(2));
    r.collector.accept(stays, hello('node-stays', t0));
    snapshot(r.collector, stays, 1, t0, records(1));
    r.collector.disconnect(gone, 1001);
    r.clock.now = t0 + 59_000;
    expect(r.collector.expire()).toEqual([]);
    r.clock.now = t0 + 61_000;
    expect(r.collector.expire()).toEqual(['node-gone']);
    expect(r.collector.nodes.has('node-gone')).toBe(false);
    expect(r.collector.timeline('node-gone')).toEqual([]);
    expect(r.collector.history('node-gone')).toBeUndefined();
    expect(r.collector.bounds.list('node-gone')).toEqual([]);
    expect(r.collector.nodes.get('node-stays')?.connected).toBe(true);
    expect(r.log.find('dropped nodes gone longer than the history window')).toMatchObject({ nodes: ['node-gone'], count: 1 });
    expect((await r.nodes()).nodes.map((n) => n.node)).toEqual(['node-stays']);
  });

  it('the real collector process sweeps by itself: a node gone past --history disappears from /api/nodes', async () => {
    const proc = await startCollectorProcess({ args: ['--history', '2s'] });
    cleanups.push(() => proc.stop());
    const ws = await RawWs.open(proc.port, proc.token);
    if (!(ws instanceof RawWs)) throw new Error(`refused ${ws.refused}`);
    const now = Date.now();
    ws.json(hello('short-lived', now));
    ws.json({ v: 1, type: 'snapshot-end', seq: 1, time: now, status: [] });
    await waitFor('the snapshot', () => proc.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'short-lived'));
    ws.end();
    const list = async () => ((await (await fetch(`http://127.0.0.1:${proc.port}/api/nodes`, { headers: { authorization: `Bearer ${proc.token}` } })).json()) as NodesBody).nodes.map((n) => n.node);
    expect(await list()).toEqual(['short-lived']);
    const dropped = await waitFor('the sweep', () => proc.lines.find((l) => l.msg === 'dropped nodes gone longer than the history window'), 8_000);
    expect(dropped).toMatchObject({ nodes: ['short-lived'], historyMs: 2_000 });
    expect(await list()).toEqual([]);
  });
});
