// History in the store (collector/state/history.ts with collector/store/store.ts):
// a collector given a store keeps only the last seconds of steps in the heap,
// and every slice a bundle asks for, read back from the store, is what the
// in-memory history of the same steps gives; without --data-dir the store is
// a temporary file, said so in the log and gone at close.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readBundle } from '../../collector/incidents/bundle.ts';
import { createPipeline, type Pipeline } from '../../collector/pipeline.ts';
import type { Session } from '../../collector/receive/collector.ts';
import { HOT_MS } from '../../collector/state/history.ts';
import { Store } from '../../collector/store/store.ts';
import { encode, type AgentMessage, type CollectorMessage } from '../../contract/protocol.ts';
import { captureLog } from '../helpers/capture-log.ts';
import { saveBundle } from '../helpers/save-bundle.ts';

const NODE = 'node-a';
const T0 = Date.UTC(2025, 5, 1, 12, 0, 0);
const WINDOW = 15 * 60_000;
const sysctl = (name: string, value: string) => ({ name, value, raw: `${name} = ${value}` });

const stores: Store[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
});

/** Two pipelines fed the same 200 steps a second apart: one with a temporary store, one with history in the heap. */
function feed(): { stored: Pipeline; heap: Pipeline; store: Store; path: string; log: ReturnType<typeof captureLog>; sent: CollectorMessage[] } {
  let clock = T0;
  const log = captureLog();
  const opened = Store.temporary(log.log, { windowMs: WINDOW, now: () => clock });
  stores.push(opened.store);
  const stored = createPipeline({ log: log.log, historyMs: WINDOW, now: () => clock, store: opened });
  const heap = createPipeline({ log: captureLog().log, historyMs: WINDOW, now: () => clock });
  const sent: CollectorMessage[] = [];
  const sessions = [stored, heap].map((p, i): { p: Pipeline; s: Session } => ({ p, s: { node: null, remote: 'test', send: (m) => void (i === 0 && sent.push(m)) } }));
  const send = (msg: AgentMessage) => {
    for (const { p, s } of sessions) p.collector.receive(s, encode(msg));
  };
  send({ v: 1, type: 'hello', node: NODE, agentVersion: 'test', intervalMs: 1000, startedAt: T0, run: 'mbd1x2y3-0123456789ab' });
  send({ v: 1, type: 'snapshot', seq: 1, time: T0, source: 'sysctl', part: 0, parts: 1, records: [sysctl('a', '0'), sysctl('b', '0')] });
  send({ v: 1, type: 'snapshot-end', seq: 1, time: T0, status: [] });
  for (let i = 1; i <= 200; i++) {
    clock = T0 + i * 1000;
    // a changes every step; c comes at 50 and goes at 150.
    const changes = [{ source: 'sysctl' as const, added: i === 50 ? [sysctl('c', '1')] : [], removed: i === 150 ? ['c'] : [], changed: [sysctl('a', String(i))], refreshed: [] }];
    send({ v: 1, type: 'diff', seq: i + 1, time: clock, changes, status: [] });
    // The 250 ms commit timer, as the collector process runs it.
    opened.store.flush();
  }
  return { stored, heap, store: opened.store, path: opened.store.path, log, sent };
}

describe('history in the store', () => {
  it('keeps only the last seconds in the heap, and slices from the store equal the in-memory history of the same steps', () => {
    const { stored, heap } = feed();
    const held = stored.collector.timeline(NODE);
    expect(held.length).toBeLessThanOrEqual(HOT_MS / 1000 + 1);
    expect(heap.collector.timeline(NODE)).toHaveLength(201);
    for (const [from, to] of [
      [T0 - 60_000, T0 + 300_000],
      [T0 + 49_500, T0 + 60_000],
      [T0 + 100_000, T0 + 100_000],
      [T0 + 149_000, T0 + 151_000],
      [T0 + 250_000, T0 + 300_000],
    ] as const) {
      const a = stored.bundles.timelines(from, to, null);
      const b = heap.bundles.timelines(from, to, null);
      expect(JSON.parse(JSON.stringify(a)), `${from - T0}..${to - T0}`).toEqual(JSON.parse(JSON.stringify(b)));
    }
    // The slice from 120 s starts from the state just before it, rebuilt from the store (c there, a at 119); the step at 120 s follows.
    const at = stored.bundles.timelines(T0 + 120_000, T0 + 121_000, null)[0]?.entries[0];
    expect(at?.kind).toBe('snapshot');
    expect(at?.changes[0]?.added).toEqual([sysctl('a', '119'), sysctl('b', '0'), sysctl('c', '1')]);
  });

  it('a bundle streamed from the store holds the same files as one made from the heap', async () => {
    const { stored, heap } = feed();
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-history-store-test-'));
    try {
      const read = async (p: Pipeline, name: string) => {
        const file = join(dir, name);
        await saveBundle(await p.bundles.recentBundle(2 * 60_000, T0 + 200_000), file);
        return (await readBundle(file)).files;
      };
      const a = await read(stored, 'stored.tar.gz');
      const b = await read(heap, 'heap.tar.gz');
      expect([...a.keys()].sort()).toContain(`timeline/${NODE}.jsonl`);
      expect(a.get(`timeline/${NODE}.jsonl`)?.trim().split('\n')).toHaveLength(1 + 121); // the state at 80 s, then the steps of 80..200 s
      expect(a).toEqual(b);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('without --data-dir the store is a temporary file: said once in the log, no durable acks, gone at close', () => {
    const { store, path, log, sent } = feed();
    expect(store.temporary).toBe(true);
    expect(sent.filter((m) => m.type === 'ack' && m.reply === 'durable')).toEqual([]);
    expect(log.lines.filter((l) => /^history kept in a temporary store at .*; pass --data-dir to keep it across restarts$/.test(String(l.msg)))).toHaveLength(1);
    expect(existsSync(path)).toBe(true);
    store.close();
    expect(existsSync(dirname(path))).toBe(false);
  });
});
