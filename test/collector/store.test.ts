// The collector's durable store (collector/store/store.ts) under a real
// pipeline: steps applied live are written by the path that applied them,
// and a new pipeline over the same directory gets back the node's state, its
// timeline, its incidents and the agent run it may resume; what leaves the
// window is deleted; a file SQLite cannot read is moved aside and the
// collector starts empty, saying so.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { inflateRawSync } from 'node:zlib';
import { afterEach, describe, expect, it } from 'vitest';
import { parsers } from '../../agent/parsers.ts';
import type { FindingLine } from '../../collector/detection/aggregate.ts';
import { createPipeline, type Pipeline } from '../../collector/pipeline.ts';
import type { Session } from '../../collector/receive/collector.ts';
import { STORE_FILE, Store } from '../../collector/store/store.ts';
import { diffByKey, indexByKey } from '../../contract/diff.ts';
import { encode, type AgentMessage, type CollectorMessage, type SourceChange } from '../../contract/protocol.ts';
import { specOf, type RecordOf, type SourceName } from '../../contract/sources.ts';
import { captureLog, type CapturedLog } from '../helpers/capture-log.ts';

// Seed 002 in iptables mode (as test/collector/detection/detectors/port-reuse.test.ts builds it):
// the client's TIME_WAIT entry to the NodePort is reopened as SYN_SENT after OLD left the Service.
const NODE = 'cn-beijing.10.20.79.226';
const CLIENT = '10.23.31.87';
const VIP = '10.20.79.226';
const OLD = '10.27.1.249';
const KEPT = '10.27.1.248';
const NEW = '10.27.1.250';
const SEP: Record<string, string> = { [KEPT]: 'KUBE-SEP-4S7NMWHTQECMLTDA', [OLD]: 'KUBE-SEP-I2YR57KE2BLSY73L', [NEW]: 'KUBE-SEP-RRH7WDK5LM6YECXZ' };
const rules = (pods: readonly string[]) => `*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-WGW5ZPXP7HZEBG5V - [0:0]
${pods.map((p) => `:${SEP[p]} - [0:0]`).join('\n')}
-A KUBE-NODEPORTS -p tcp -m comment --comment "ratel/vs-test-service:main" -m tcp --dport 31199 -j KUBE-SVC-WGW5ZPXP7HZEBG5V
-A KUBE-SERVICES -d 10.27.255.42/32 -p tcp -m comment --comment "ratel/vs-test-service:main cluster IP" -m tcp --dport 80 -j KUBE-SVC-WGW5ZPXP7HZEBG5V
${pods.map((p) => `-A KUBE-SVC-WGW5ZPXP7HZEBG5V -m comment --comment "ratel/vs-test-service:main" -j ${SEP[p]}`).join('\n')}
${pods.map((p) => `-A ${SEP[p]} -p tcp -m comment --comment "ratel/vs-test-service:main" -m tcp -j DNAT --to-destination ${p}:80`).join('\n')}
COMMIT
`;
const timeWait = (timer: number, sport = 58578) =>
  `ipv4     2 tcp      6 ${timer} TIME_WAIT src=${CLIENT} dst=${VIP} sport=${sport} dport=31199 src=${OLD} dst=${CLIENT} sport=80 dport=${sport} [ASSURED] mark=0 zone=0 use=2\n`;
const synSent = (timer: number, sport = 58578) =>
  `ipv4     2 tcp      6 ${timer} SYN_SENT src=${CLIENT} dst=${VIP} sport=${sport} dport=31199 [UNREPLIED] src=${OLD} dst=${CLIENT} sport=80 dport=${sport} mark=0 zone=0 use=2\n`;

const T0 = Date.UTC(2025, 5, 1, 12, 0, 0);
const RUN = 'mbd1x2y3-0123456789ab';

type Outputs = Partial<Record<SourceName, string>>;

/** One agent run speaking the wire protocol to a pipeline, on a clock the test moves. */
class FakeAgent {
  readonly sent: CollectorMessage[] = [];
  readonly session: Session;
  #state = new Map<SourceName, Map<string, RecordOf<SourceName>>>();
  seq = 0;
  readonly rig: Rig;
  constructor(rig: Rig) {
    this.rig = rig;
    this.session = { node: null, remote: 'test', send: (m) => this.sent.push(m) };
  }
  #send(msg: AgentMessage): void {
    this.rig.pipeline.collector.receive(this.session, encode(msg));
  }
  hello(): void {
    this.#send({ v: 1, type: 'hello', node: NODE, agentVersion: 'test', intervalMs: 1000, startedAt: T0, run: RUN });
  }
  /** One tick: a snapshot for the first, a diff after. */
  step(time: number, outputs: Outputs, snapshot = this.seq === 0): void {
    this.rig.clock = time;
    this.seq++;
    const changes: SourceChange[] = [];
    for (const [source, text] of Object.entries(outputs) as [SourceName, string][]) {
      const spec = specOf(source);
      const next = indexByKey<RecordOf<SourceName>>(parsers[source](text).records, spec).map;
      changes.push({ source, ...diffByKey<RecordOf<SourceName>>(this.#state.get(source) ?? new Map(), next, spec) });
      this.#state.set(source, next);
    }
    if (snapshot) {
      for (const [source, map] of this.#state) this.#send({ v: 1, type: 'snapshot', seq: this.seq, time, source, part: 0, parts: 1, records: [...map.values()] });
      this.#send({ v: 1, type: 'snapshot-end', seq: this.seq, time, status: [] });
    } else this.#send({ v: 1, type: 'diff', seq: this.seq, time, changes, status: [] });
  }
}

interface Rig {
  readonly pipeline: Pipeline;
  readonly log: CapturedLog;
  readonly findings: FindingLine[];
  clock: number;
}

const dirs: string[] = [];
const stores: Store[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'conntrail-store-'));
  dirs.push(d);
  return d;
}

function rig(dir: string, clock = T0, historyMs = 15 * 60_000): Rig {
  const log = captureLog();
  const findings: FindingLine[] = [];
  const r: Rig = { clock, log, findings, pipeline: undefined as unknown as Pipeline };
  const opened = Store.open(dir, log.log, { windowMs: historyMs, now: () => r.clock });
  stores.push(opened.store);
  Object.assign(r, { pipeline: createPipeline({ log: log.log, historyMs, now: () => r.clock, store: opened, onFinding: (l) => findings.push(l) }) });
  return r;
}

/** The seed's reuse, live: OLD leaves at 2, the tuple is reopened at 4. */
function liveReuse(r: Rig): FakeAgent {
  const a = new FakeAgent(r);
  a.hello();
  a.step(T0, { iptables: rules([KEPT, OLD]), conntrack: timeWait(60) });
  a.step(T0 + 2000, { iptables: rules([KEPT, NEW]), conntrack: timeWait(58) });
  a.step(T0 + 4000, { conntrack: synSent(119) });
  return a;
}

const conntrackOf = (p: Pipeline) => [...(p.collector.nodes.get(NODE)?.recordMap('conntrack').values() ?? [])].map((e) => e.raw);

describe('collector store: write and reload', () => {
  it('gives a restarted collector the node, its timeline, its incident and the run it may resume, without logging old findings again', () => {
    const dir = tempDir();
    const r1 = rig(dir);
    const a = liveReuse(r1);
    expect(r1.findings.map((f) => f.finding)).toEqual(['port-reuse-to-removed-endpoint']);
    const incident = r1.pipeline.bundles.incidents.list()[0];
    expect(incident).toBeDefined();
    r1.pipeline.store?.flush();
    // Acked after the commit, with the newest seq and its sample time.
    expect(a.sent.filter((m) => m.type === 'ack')).toEqual([
      { v: 1, type: 'ack', run: RUN, seq: null, time: null, reply: 'hello' },
      { v: 1, type: 'ack', run: RUN, seq: 3, time: T0 + 4000, reply: 'durable' },
    ]);

    // A second collector over the same directory (the first never closed its store: a crash after the commit).
    const r2 = rig(dir, T0 + 30_000);
    expect(r2.log.find('reloaded from the data store')).toMatchObject({ nodeCount: 1, steps: 3, incidents: 1 });
    expect(r2.findings).toEqual([]);
    expect(conntrackOf(r2.pipeline)).toEqual(conntrackOf(r1.pipeline));
    expect(r2.pipeline.collector.timeline(NODE).map((e) => [e.seq, e.kind, e.time])).toEqual(r1.pipeline.collector.timeline(NODE).map((e) => [e.seq, e.kind, e.time]));
    const [back] = r2.pipeline.bundles.incidents.list();
    expect(back?.id).toBe(incident?.id);
    expect(back?.findings.map((f) => [f.finding, f.time, f.summary])).toEqual(incident?.findings.map((f) => [f.finding, f.time, f.summary]));
    expect([...(back?.nodes ?? [])]).toEqual([NODE]);
    // A bundle of the restarted collector covers the time before the restart, and its findings are what that timeline yields.
    const timelines = r2.pipeline.bundles.timelines(T0 - 60_000, T0 + 30_000, null);
    expect(timelines.map((t) => [t.node, t.entries.length])).toEqual([[NODE, 3]]);
    expect(r2.pipeline.collector.nodes.get(NODE)?.connected).toBe(false);

    // The same run comes back: told it may resume after seq 3, and its next diff applies on the reloaded state.
    const again = new FakeAgent(r2);
    Object.assign(again, { seq: 3 });
    again.hello();
    expect(again.sent).toEqual([{ v: 1, type: 'ack', run: RUN, seq: 3, time: T0 + 4000, reply: 'hello' }]);
    const before = r2.pipeline.collector.nodes.get(NODE)?.lastSeq;
    r2.clock = T0 + 31_000;
    r2.pipeline.collector.receive(again.session, encode({ v: 1, type: 'diff', seq: 4, time: T0 + 31_000, changes: [], status: [] }));
    expect(before).toBe(3);
    expect(r2.pipeline.collector.nodes.get(NODE)?.lastSeq).toBe(4);
    expect(r2.log.find('asking agent for a resync')).toBeUndefined();
    expect(r2.log.find('agent connected; it resumes its run after the last step held')).toMatchObject({ resumeAfterSeq: 3 });
  });

  it('a different agent run is told the collector holds nothing of it', () => {
    const dir = tempDir();
    liveReuse(rig(dir)).rig.pipeline.store?.flush();
    const r2 = rig(dir, T0 + 30_000);
    const other: Session & { sent: CollectorMessage[] } = { node: null, remote: 'test', sent: [], send: (m) => other.sent.push(m) };
    r2.pipeline.collector.receive(other, encode({ v: 1, type: 'hello', node: NODE, agentVersion: 'test', intervalMs: 1000, startedAt: T0 + 20_000, run: 'another-run' }));
    expect(other.sent).toEqual([{ v: 1, type: 'ack', run: 'another-run', seq: null, time: null, reply: 'hello' }]);
  });

  it('writes nothing before the commit: steps not yet flushed are not reloaded (the agent journal still holds them)', () => {
    const dir = tempDir();
    const r1 = rig(dir);
    const a = liveReuse(r1);
    r1.pipeline.store?.flush();
    a.step(T0 + 5000, { conntrack: synSent(118) });
    const r2 = rig(dir, T0 + 30_000);
    expect(r2.pipeline.collector.nodes.get(NODE)?.lastSeq).toBe(3);
    expect(a.sent.filter((m) => m.type === 'ack' && m.reply === 'durable').map((m) => m.type === 'ack' && m.seq)).toEqual([3]);
  });
});

describe('collector store: retention', () => {
  it('deletes the steps before the newest checkpoint older than the window, without rewriting any state, so a reload starts from the same state', () => {
    const dir = tempDir();
    const r1 = rig(dir, T0, 10_000);
    const a = new FakeAgent(r1);
    const store = r1.pipeline.store;
    if (store === null) throw new Error('no store');
    a.hello();
    a.step(T0, { iptables: rules([KEPT, OLD]), conntrack: timeWait(60) });
    // 30 steps a second apart, each changing the TIME_WAIT timer; sport 1000+i comes and goes; committed as the 250 ms timer would.
    for (let i = 1; i <= 30; i++) {
      a.step(T0 + i * 1000, { conntrack: timeWait(60 - i) + (i % 2 === 0 ? timeWait(50, 1000 + i) : '') });
      store.flush();
    }
    const read = (): { steps: number; oldest: number; checkpoints: number[] } => {
      const db = new DatabaseSync(join(dir, STORE_FILE));
      const steps = Number(db.prepare('SELECT count(*) AS n FROM steps').get()?.n);
      const oldest = Number(db.prepare('SELECT min(time) AS t FROM steps').get()?.t);
      const checkpoints = db.prepare('SELECT time FROM checkpoints ORDER BY time').all().map((r) => Number(r.time));
      db.close();
      return { steps, oldest, checkpoints };
    };
    // A window of 10 s takes a checkpoint every 3.3 s of sample time: after steps 4, 8, ... 28 (the snapshot at 0 is the first base).
    expect(read().checkpoints.map((t) => (t - T0) / 1000)).toEqual([4, 8, 12, 16, 20, 24, 28]);
    store.retain(r1.clock, []);
    const after = read();
    // The newest base at or before the horizon (30 - 10 = 20 s) is the checkpoint at 20 s: the steps up to it go, the window stays.
    expect(after.checkpoints.map((t) => (t - T0) / 1000)).toEqual([20, 24, 28]);
    expect((after.oldest - T0) / 1000).toBe(21);
    expect(after.steps).toBe(10);
    // A bundle of the last 10 s still starts from the state at its start.
    const timeline = r1.pipeline.bundles.timelines(r1.clock - 10_000, r1.clock, null)[0];
    expect(timeline?.entries[0]?.kind).toBe('snapshot');
    expect(timeline?.entries.length).toBe(11);
    const r2 = rig(dir, r1.clock + 1000, 10_000);
    expect(conntrackOf(r2.pipeline)).toEqual(conntrackOf(r1.pipeline));
    expect(r2.pipeline.collector.nodes.get(NODE)?.recordMap('iptables').size).toBe(r1.pipeline.collector.nodes.get(NODE)?.recordMap('iptables').size);
    // A second pass with nothing newly past the window changes nothing.
    r2.pipeline.store?.retain(r2.clock, []);
    expect(read()).toEqual(after);
    const r3 = rig(dir, r1.clock + 2000, 10_000);
    expect(conntrackOf(r3.pipeline)).toEqual(conntrackOf(r1.pipeline));
  });

  it('drops incidents no longer held and finding lines older than the window', () => {
    const dir = tempDir();
    const r1 = rig(dir, T0, 60_000);
    liveReuse(r1);
    r1.pipeline.store?.retain(T0 + 10 * 60_000, []);
    const r2 = rig(dir, T0 + 10 * 60_000, 60_000);
    expect(r2.pipeline.bundles.incidents.list()).toEqual([]);
    expect(r2.log.find('reloaded from the data store')).toMatchObject({ incidents: 0, findings: 0 });
  });
});

describe('collector store: damaged files', () => {
  for (const [what, damage] of [
    ['overwritten with bytes that are not a database', (path: string) => writeFileSync(path, Buffer.alloc(8192, 0x5a))],
    ['torn (cut short mid-page)', (path: string) => truncateSync(path, Math.floor(readFileSync(path).length / 2) + 100)],
  ] as const) {
    it(`a store file ${what} is moved aside, said so in the log, and the collector starts with an empty store`, () => {
      const dir = tempDir();
      const r1 = rig(dir);
      liveReuse(r1);
      // Written through to the main file, then closed, so the damage is to the database itself.
      r1.pipeline.store?.close();
      stores.splice(stores.indexOf(r1.pipeline.store as Store), 1);
      damage(join(dir, STORE_FILE));
      const r2 = rig(dir, T0 + 30_000);
      const err = r2.log.find(/^the data store could not be read/);
      expect(err).toMatchObject({ level: 50, path: join(dir, STORE_FILE) });
      expect(existsSync(String(err?.movedTo))).toBe(true);
      expect(readdirSync(dir).some((f) => f.startsWith(`${STORE_FILE}.unreadable-`))).toBe(true);
      expect(r2.pipeline.collector.nodes.size).toBe(0);
      expect(r2.pipeline.bundles.incidents.list()).toEqual([]);
      // The fresh store works: what this collector applies is reloaded by the next.
      liveReuse(r2);
      r2.pipeline.store?.flush();
      const r3 = rig(dir, T0 + 60_000);
      expect(r3.pipeline.collector.nodes.get(NODE)?.lastSeq).toBe(3);
      expect(r3.log.find(/^the data store could not be read/)).toBeUndefined();
    });
  }

  it('stores each step deflated, reads back stores written before that (frames as TEXT), and refuses a deflated row that does not inflate', () => {
    const dir = tempDir();
    const r1 = rig(dir);
    liveReuse(r1);
    r1.pipeline.store?.flush();
    const expected = r1.pipeline.collector.nodes.get(NODE)?.recordMap('conntrack');
    r1.pipeline.store?.close();
    const db = new DatabaseSync(join(dir, STORE_FILE));
    const rows = db.prepare('SELECT id, frame FROM steps ORDER BY id').all();
    expect(rows.length).toBe(3);
    for (const row of rows) {
      expect(row.frame).toBeInstanceOf(Uint8Array);
      const json = inflateRawSync(row.frame as Uint8Array).toString('utf8');
      expect(JSON.parse(json)).toMatchObject({ v: 1, type: 'diff' });
      // What an earlier collector wrote: the same frame as TEXT.
      db.prepare('UPDATE steps SET frame = ? WHERE id = ?').run(json, Number(row.id));
    }
    db.close();
    const r2 = rig(dir, T0 + 30_000);
    expect(r2.log.find('reloaded from the data store')).toMatchObject({ steps: 3 });
    expect([...(r2.pipeline.collector.nodes.get(NODE)?.recordMap('conntrack') ?? new Map())]).toEqual([...(expected ?? new Map())]);
    r2.pipeline.store?.close();
    const db2 = new DatabaseSync(join(dir, STORE_FILE));
    // Bytes that are no deflate stream, where step 3 was.
    db2.prepare('UPDATE steps SET frame = ? WHERE seq = 3').run(new Uint8Array([0xff, 0xfe, 0xfd, 0x00, 0x01]));
    db2.close();
    const r3 = rig(dir, T0 + 60_000);
    expect(r3.log.find('reloaded from the data store')).toMatchObject({ steps: 2, unreadable: { step: 1 } });
  });

  it('a damaged step row ends the reload of that node there: what precedes it is kept, and the run is not resumed on it', () => {
    const dir = tempDir();
    const r1 = rig(dir);
    liveReuse(r1);
    r1.pipeline.store?.flush();
    const db = new DatabaseSync(join(dir, STORE_FILE));
    db.prepare("UPDATE steps SET frame = '{\"v\":1,\"type\":\"diff\",\"seq\":\"x\"}' WHERE seq = 3").run();
    db.close();
    const r2 = rig(dir, T0 + 30_000);
    expect(r2.log.find('reloaded from the data store')).toMatchObject({ steps: 2, unreadable: { step: 1 } });
    expect(r2.pipeline.collector.nodes.get(NODE)?.lastSeq).toBe(2);
    const s: Session & { sent: CollectorMessage[] } = { node: null, remote: 'test', sent: [], send: (m) => s.sent.push(m) };
    r2.pipeline.collector.receive(s, encode({ v: 1, type: 'hello', node: NODE, agentVersion: 'test', intervalMs: 1000, startedAt: T0, run: RUN }));
    expect(s.sent).toEqual([{ v: 1, type: 'ack', run: RUN, seq: null, time: null, reply: 'hello' }]);
  });
});
