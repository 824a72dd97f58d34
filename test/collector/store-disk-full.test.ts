// The data store on a disk that fills up (a real tmpfs of a few hundred KB,
// filled by a file until the kernel says ENOSPC): commits fail, nothing is
// acknowledged, the writes wait in order for the next commit, and once space
// is back every step is stored: a bundle's timelines equal those of a
// collector that kept everything in the heap. When the failure outlasts the
// queue bound the queued steps are given up, the API says how many, and the
// node's stored timeline restarts from its live state, consistent again.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createPipeline, type Pipeline } from '../../collector/pipeline.ts';
import type { Session } from '../../collector/receive/collector.ts';
import { Store } from '../../collector/store/store.ts';
import { encode, type AgentMessage, type CollectorMessage } from '../../contract/protocol.ts';
import { captureLog, type CapturedLog } from '../helpers/capture-log.ts';

const NODE = 'node-a';
const RUN = 'mbd1x2y3-0123456789ab';
const T0 = Date.UTC(2026, 10, 30, 12, 0, 0);
const WINDOW = 15 * 60_000;
// Fat values, so each step needs new pages in the WAL; the disk holds an outage's worth of them once freed.
const sysctl = (name: string, value: string) => ({ name, value, raw: `${name} = ${value}` });
const fat = (i: number) => `${i}-${'x'.repeat(1000)}`;

interface Disk {
  readonly dir: string;
  fill(): void;
  free(): void;
  remove(): void;
}

/** A tmpfs of `kb` KiB mounted for the test, and a file that fills what is left of it. */
function smallDisk(kb: number): Disk {
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-disk-full-'));
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${kb}k`, 'tmpfs', mnt], { stdio: 'pipe' });
  } catch (err) {
    throw new Error(`this test needs root to mount a tmpfs (mount -t tmpfs): ${String((err as Error).message).slice(0, 200)}`);
  }
  const filler = join(mnt, 'filler');
  return {
    dir: join(mnt, 'data'),
    fill() {
      // Written in blocks until the kernel refuses one: the disk is then full to the block.
      const block = Buffer.alloc(4096, 1);
      let n = 0;
      for (;;) {
        try {
          writeFileSync(filler, block, { flag: 'a' });
          n++;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw err;
        }
        if (n > kb) throw new Error('the tmpfs did not fill up');
      }
    },
    free() {
      rmSync(filler, { force: true });
    },
    remove() {
      execFileSync('umount', ['-l', mnt], { stdio: 'pipe' });
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

interface Rig {
  readonly stored: Pipeline;
  readonly heap: Pipeline;
  readonly store: Store;
  readonly log: CapturedLog;
  readonly acks: CollectorMessage[];
  step(i: number): void;
}

function rig(disk: Disk, maxQueued?: number): Rig {
  let clock = T0;
  const log = captureLog();
  const opened = Store.open(disk.dir, log.log, { windowMs: WINDOW, now: () => clock, ...(maxQueued === undefined ? {} : { maxQueued }) });
  const stored = createPipeline({ log: log.log, historyMs: WINDOW, now: () => clock, store: opened });
  const heap = createPipeline({ log: captureLog().log, historyMs: WINDOW, now: () => clock });
  const acks: CollectorMessage[] = [];
  const sessions = [stored, heap].map((p, i): { p: Pipeline; s: Session } => ({ p, s: { node: null, remote: 'test', send: (m) => void (i === 0 && m.type === 'ack' && m.reply === 'durable' && acks.push(m)) } }));
  const send = (msg: AgentMessage) => {
    for (const { p, s } of sessions) p.collector.receive(s, encode(msg));
  };
  send({ v: 1, type: 'hello', node: NODE, agentVersion: 'test', intervalMs: 1000, startedAt: T0, run: RUN });
  send({ v: 1, type: 'snapshot', seq: 1, time: T0, source: 'sysctl', part: 0, parts: 1, records: [sysctl('a', fat(0)), sysctl('b', '0')] });
  send({ v: 1, type: 'snapshot-end', seq: 1, time: T0, status: [] });
  opened.store.flush();
  return {
    stored,
    heap,
    store: opened.store,
    log,
    acks,
    step(i: number) {
      clock = T0 + i * 1000;
      // a changes every step; c comes at 10 and goes at 40: a removal of something added while the disk was full.
      const changes = [{ source: 'sysctl' as const, added: i === 10 ? [sysctl('c', '1')] : [], removed: i === 40 ? ['c'] : [], changed: [sysctl('a', fat(i))], refreshed: [] }];
      send({ v: 1, type: 'diff', seq: i + 1, time: clock, changes, status: [] });
      // The 250 ms commit timer, as the collector process runs it.
      opened.store.flush();
    },
  };
}

const timelines = (p: Pipeline, from: number, to: number) => JSON.parse(JSON.stringify(p.bundles.timelines(from, to, null))) as unknown;
const lastAck = (r: Rig): { seq: number | null } | undefined => {
  const m = r.acks.at(-1);
  return m?.type === 'ack' ? m : undefined;
};

describe('the data store on a disk that fills up', { timeout: 60_000 }, () => {
  const disks: Disk[] = [];
  const stores: Store[] = [];
  afterEach(() => {
    for (const s of stores.splice(0)) s.close();
    for (const d of disks.splice(0)) d.remove();
  });

  it('keeps the writes while commits fail, acknowledges nothing meanwhile, and stores every step once there is space again', () => {
    const disk = smallDisk(2048);
    disks.push(disk);
    const r = rig(disk);
    stores.push(r.store);
    for (let i = 1; i <= 5; i++) r.step(i);
    expect(lastAck(r)).toMatchObject({ seq: 6 });
    disk.fill();
    for (let i = 6; i <= 45; i++) r.step(i);
    expect(r.log.lines.filter((l) => l.msg === 'the data store could not write: kept the writes for the next commit (not acknowledged to the agents)').length).toBeGreaterThan(0);
    expect(r.store.status()).toMatchObject({ droppedSteps: 0 });
    expect(r.store.status().failedCommits).toBeGreaterThan(0);
    expect(r.store.status().queued).toBeGreaterThan(0);
    // The agent was told nothing past what was durable before the disk filled.
    expect(lastAck(r)?.seq ?? 0).toBeLessThan(7);
    disk.free();
    r.step(46);
    expect(r.store.status()).toMatchObject({ queued: 0, droppedSteps: 0 });
    expect(lastAck(r)).toMatchObject({ seq: 47 });
    // Every step, those written late included, as the heap holds them: from the start, across the outage, and from inside it.
    for (const [from, to] of [
      [T0, T0 + 46_000],
      [T0 + 20_000, T0 + 46_000],
      [T0 + 41_000, T0 + 44_000],
    ] as const)
      expect(timelines(r.stored, from, to), `${from - T0}..${to - T0}`).toEqual(timelines(r.heap, from, to));
  });

  it('past the queue bound gives up the queued steps, says so in the log and the status, and restarts the node from its live state', () => {
    const disk = smallDisk(2048);
    disks.push(disk);
    const r = rig(disk, 20);
    stores.push(r.store);
    for (let i = 1; i <= 5; i++) r.step(i);
    disk.fill();
    for (let i = 6; i <= 45; i++) r.step(i);
    expect(r.log.lines.filter((l) => String(l.msg).startsWith('the data store has failed to write for too long: gave up the steps queued for it'))).not.toHaveLength(0);
    const dropped = r.store.status().droppedSteps;
    expect(dropped).toBeGreaterThan(0);
    disk.free();
    r.step(46);
    r.step(47);
    expect(r.store.status()).toMatchObject({ queued: 0, droppedSteps: dropped });
    // Stored again from step 46 on, starting from the node's state then: the same state and steps as the heap's from there.
    expect(timelines(r.stored, T0 + 47_000, T0 + 47_000)).toEqual(timelines(r.heap, T0 + 47_000, T0 + 47_000));
    // Nothing before the restart is claimed: the stored timeline starts there, not with the lost steps.
    const whole = r.stored.bundles.timelines(T0, T0 + 47_000, null)[0]?.entries ?? [];
    expect(whole[0]).toMatchObject({ kind: 'snapshot', seq: 47 });
    expect(whole.map((e) => e.seq)).toEqual([47, 48]);
  });
});
