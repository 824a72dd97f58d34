// Bundles are the heaviest thing the collector does (every node's window
// replayed): they are built one at a time, a few requests wait their turn and
// more are refused with 503 and Retry-After, the bound listed; the archive is
// streamed from a temp file that is gone once the answer is sent, or once the
// client gives up on it.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BundleBusy, MAX_BUNDLES_WAITING } from '../../collector/incidents/bundle-service.ts';
import { readBundle } from '../../collector/incidents/bundle.ts';
import { createPipeline } from '../../collector/pipeline.ts';
import type { Session } from '../../collector/receive/collector.ts';
import { Store } from '../../collector/store/store.ts';
import { encode, type AgentMessage } from '../../contract/protocol.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';
import { RawWs, startCollectorProcess, type CollectorProcess } from '../helpers/collector-process.ts';
import { saveBundle } from '../helpers/save-bundle.ts';

const T0 = Date.UTC(2026, 10, 30, 12, 0, 0);
const sysctl = (name: string, value: string) => ({ name, value, raw: `${name} = ${value}` });
const bundleDirs = (dir: string) => readdirSync(dir).filter((n) => n.startsWith('conntrail-bundle-'));

describe('bundles, one at a time', () => {
  const stores: Store[] = [];
  let scratch = '';
  let savedTmp: string | undefined;
  beforeAll(() => {
    // The bundles' temp dirs go under TMPDIR: a private one, so that "none left" is about these bundles only.
    scratch = mkdtempSync(join(tmpdir(), 'conntrail-bundle-serving-'));
    savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = scratch;
  });
  afterEach(() => {
    for (const s of stores.splice(0)) s.close();
  });
  afterAll(() => {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
    rmSync(scratch, { recursive: true, force: true });
  });

  it(`builds one, lets ${MAX_BUNDLES_WAITING} wait, refuses the next with BundleBusy and lists the bound; the ones built are whole and leave no temp dir`, async () => {
    let clock = T0;
    const log = captureLog();
    const opened = Store.temporary(log.log, { windowMs: 15 * 60_000, now: () => clock });
    stores.push(opened.store);
    const p = createPipeline({ log: log.log, historyMs: 15 * 60_000, now: () => clock, store: opened });
    const session: Session = { node: null, remote: 'test', send: () => undefined };
    const send = (msg: AgentMessage) => p.collector.receive(session, encode(msg));
    send({ v: 1, type: 'hello', node: 'node-a', agentVersion: 'test', intervalMs: 1000, startedAt: T0, run: 'mbd1x2y3-0123456789ab' });
    send({ v: 1, type: 'snapshot', seq: 1, time: T0, source: 'sysctl', part: 0, parts: 1, records: [sysctl('a', '0')] });
    send({ v: 1, type: 'snapshot-end', seq: 1, time: T0, status: [] });
    for (let i = 1; i <= 30; i++) {
      clock = T0 + i * 1000;
      send({ v: 1, type: 'diff', seq: i + 1, time: clock, changes: [{ source: 'sysctl', added: [], removed: [], changed: [sysctl('a', String(i))], refreshed: [] }], status: [] });
    }
    opened.store.flush();

    // Asked for in the same turn of the event loop: the first is building while the others arrive.
    const asked = Array.from({ length: MAX_BUNDLES_WAITING + 2 }, () => p.bundles.recentBundle(60_000, clock));
    const settled = await Promise.allSettled(asked);
    expect(settled.map((s) => s.status)).toEqual([...Array.from({ length: MAX_BUNDLES_WAITING + 1 }, () => 'fulfilled'), 'rejected']);
    const refused = settled.at(-1);
    expect(refused?.status === 'rejected' && refused.reason instanceof BundleBusy).toBe(true);
    expect(p.collector.bounds.list('collector')).toEqual([expect.objectContaining({ bound: 'bundles.waiting', limit: MAX_BUNDLES_WAITING, hits: 1 })]);
    expect(log.lines.filter((l) => l.msg === 'bound hit: bundles.waiting')).toHaveLength(1);

    const timelines: string[] = [];
    for (const [i, s] of settled.entries()) {
      if (s.status !== 'fulfilled') continue;
      const file = await saveBundle(s.value, join(scratch, `b${i}.tar.gz`));
      timelines.push((await readBundle(file)).files.get('timeline/node-a.jsonl') ?? '');
    }
    expect(timelines).toHaveLength(MAX_BUNDLES_WAITING + 1);
    expect(timelines[0]?.trim().split('\n')).toHaveLength(1 + 30);
    expect(new Set(timelines).size).toBe(1);
    expect(bundleDirs(scratch)).toEqual([]);
    // Once they are done, the next is built again.
    await saveBundle(await p.bundles.recentBundle(60_000, clock), join(scratch, 'after.tar.gz'));
    expect(bundleDirs(scratch)).toEqual([]);
  });
});

describe('a bundle over HTTP', { timeout: 60_000 }, () => {
  let proc: CollectorProcess;
  beforeAll(async () => {
    proc = await startCollectorProcess({ token: 'bundle-serving-token' });
    const ws = await RawWs.open(proc.port, proc.token);
    if (!(ws instanceof RawWs)) throw new Error(`refused ${ws.refused}`);
    const now = Date.now();
    // Enough lines that the archive outlasts one read of the socket.
    const records = Array.from({ length: 20_000 }, (_, i) => sysctl(`net.test.k${i}`, `${(i * 2654435761) % 1000003}`));
    ws.json({ v: 1, type: 'hello', node: 'node-a', agentVersion: 'test', intervalMs: 1000, startedAt: now });
    ws.json({ v: 1, type: 'snapshot', seq: 1, time: now, source: 'sysctl', part: 0, parts: 1, records });
    ws.json({ v: 1, type: 'snapshot-end', seq: 1, time: now, status: [] });
    await waitFor('the snapshot applied', () => proc.lines.some((l) => l.msg === 'snapshot applied'));
  });
  afterAll(async () => {
    await proc.stop();
  });

  it('is a gzip whose length the headers said, and its temp dir is gone after; a client that hangs up mid-way leaves none either', async () => {
    const tmp = join(proc.dir, 'tmp');
    const res = await fetch(`http://127.0.0.1:${proc.port}/api/bundle?since=5m`, { headers: { Authorization: `Bearer ${proc.token}` } });
    expect(res.status).toBe(200);
    const body = Buffer.from(await res.arrayBuffer());
    expect(body.length).toBe(Number(res.headers.get('content-length')));
    expect([body[0], body[1]]).toEqual([0x1f, 0x8b]);
    await waitFor('no bundle temp dir after the answer', () => bundleDirs(tmp).length === 0);

    const ac = new AbortController();
    const cut = await fetch(`http://127.0.0.1:${proc.port}/api/bundle?since=5m`, { headers: { Authorization: `Bearer ${proc.token}` }, signal: ac.signal });
    const reader = cut.body?.getReader();
    await reader?.read();
    ac.abort();
    await waitFor('no bundle temp dir after the client hung up', () => bundleDirs(tmp).length === 0);
    expect((await fetch(`http://127.0.0.1:${proc.port}/healthz`)).ok).toBe(true);
  });
});
