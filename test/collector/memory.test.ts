// Past its memory budget the collector sheds history, not live state: the
// node's records stay whole, its timeline gets shorter, and the bound is
// logged once and listed. With history in the store there is nothing to
// shed, and the bound says so rather than claim it shortened anything.
import { describe, expect, it } from 'vitest';
import { Collector, type Session } from '../../collector/receive/collector.ts';
import { cgroupMemoryLimit, defaultBudget, MemoryBudget, parseSize } from '../../collector/state/memory.ts';
import type { AgentMessage } from '../../contract/protocol.ts';
import { captureLog } from '../helpers/capture-log.ts';
import { createPipeline } from '../../collector/pipeline.ts';
import { Store } from '../../collector/store/store.ts';

const T0 = Date.parse('2026-12-01T10:00:00Z');
const sysctl = (v: string) => ({ name: 'net.ipv4.vs.conn_reuse_mode', value: v, raw: `net.ipv4.vs.conn_reuse_mode = ${v}` });

/** A node's snapshot at T0, then ten minutes of one change a second, with the clock moved to each step's time. */
function feed(collector: Collector, setClock: (t: number) => void): void {
  const session: Session = { node: null, remote: 'test', send: () => undefined };
  const send = (m: AgentMessage) => collector.accept(session, m);
  send({ v: 1, type: 'hello', node: 'node-1', agentVersion: 't', intervalMs: 1000, startedAt: T0 });
  send({ v: 1, type: 'snapshot', seq: 1, time: T0, source: 'sysctl', part: 0, parts: 1, records: [sysctl('0')] });
  send({ v: 1, type: 'snapshot-end', seq: 1, time: T0, status: [] });
  for (let i = 1; i <= 600; i++) {
    setClock(T0 + i * 1000);
    send({ v: 1, type: 'diff', seq: i + 1, time: T0 + i * 1000, status: [], changes: [{ source: 'sysctl', added: [], removed: [], changed: [sysctl(String(i % 2))], refreshed: [] }] });
  }
}

function run(rss: () => number) {
  const { log, lines } = captureLog();
  let clock = T0;
  const collector = new Collector({ log, now: () => clock, historyMs: 15 * 60_000, memory: new MemoryBudget(1_000, 15 * 60_000, rss) });
  feed(collector, (t) => (clock = t));
  return { collector, lines };
}

describe('memory budget', () => {
  it('under budget keeps the whole window', () => {
    const { collector, lines } = run(() => 500);
    expect(collector.timeline('node-1')).toHaveLength(601);
    expect(collector.bounds.list('collector')).toEqual([]);
    expect(lines.some((l) => l.msg === 'bound hit: memory')).toBe(false);
  });

  it('over budget halves the history kept, down to a minute, keeps live state, and says so once', () => {
    const { collector, lines } = run(() => 5_000);
    const timeline = collector.timeline('node-1');
    const span = (timeline.at(-1)?.time ?? 0) - (timeline[0]?.time ?? 0);
    expect(span).toBeLessThanOrEqual(60_000);
    expect(span).toBeGreaterThan(0);
    // Live state is whole: the last value sent.
    expect(collector.nodes.get('node-1')?.recordMap('sysctl').get('net.ipv4.vs.conn_reuse_mode')?.value).toBe('0');
    expect(lines.filter((l) => l.msg === 'bound hit: memory')).toHaveLength(1);
    expect(collector.bounds.list('collector')).toEqual([expect.objectContaining({ bound: 'memory', limit: 1_000, action: expect.stringContaining('history shortened') })]);
    // A bundle still starts from a full state: the folded base.
    expect(collector.history('node-1')?.slice(0, Number.MAX_SAFE_INTEGER)[0]?.kind).toBe('snapshot');
  });

  it('over budget with history in the store sheds nothing, keeps the whole window, and says that it could not', () => {
    const { log, lines } = captureLog();
    let clock = T0;
    const opened = Store.temporary(log, { windowMs: 15 * 60_000, now: () => clock });
    try {
      // A budget of one byte: every check finds RSS over it.
      const p = createPipeline({ log, historyMs: 15 * 60_000, now: () => clock, store: opened, memoryBudget: 1 });
      feed(p.collector, (t) => (clock = t));
      const [t] = p.bundles.timelines(T0, clock, null);
      expect(t?.entries).toHaveLength(601);
      expect(t?.entries[0]).toMatchObject({ kind: 'snapshot', time: T0 });
      expect(lines.filter((l) => l.msg === 'bound hit: memory')).toHaveLength(1);
      expect(p.collector.bounds.list('collector')).toEqual([expect.objectContaining({ bound: 'memory', limit: 1, action: expect.stringMatching(/^RSS is over the memory budget with history already in the store: .*nothing was shed/) })]);
    } finally {
      opened.store.close();
    }
  });

  it.each([
    ['900Mi', 900 * 1024 ** 2],
    ['1Gi', 1024 ** 3],
    ['500M', 500e6],
    ['1073741824', 1073741824],
    ['lots', null],
    ['-1Gi', null],
    ['1Ti', null],
  ])('parses the size %s', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it('defaults to 85% of the cgroup limit, or of the Deployment limit outside a cgroup', () => {
    expect(cgroupMemoryLimit((p) => (p === '/sys/fs/cgroup/memory.max' ? '536870912\n' : ''))).toBe(536870912);
    expect(cgroupMemoryLimit((p) => (p === '/sys/fs/cgroup/memory.max' ? 'max\n' : '9223372036854771712\n'))).toBeNull();
    expect(defaultBudget(1000)).toBe(850);
    expect(defaultBudget(null)).toBe(Math.floor(1024 ** 3 * 0.85));
  });
});
