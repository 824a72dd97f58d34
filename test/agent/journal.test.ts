// The agent's journal of diff frames: what it keeps within its bounds, and
// what a reconnect does for each answer a collector can give.
import { describe, expect, it } from 'vitest';
import { Journal, parseBytes, parseJournalAge } from '../../agent/journal.ts';

const T0 = Date.UTC(2025, 0, 1);
const frame = (seq: number, pad = 0): string => JSON.stringify({ v: 1, type: 'diff', seq, pad: 'x'.repeat(pad) });

/** A journal chained from a snapshot at seq 10, with frames 11..(10+n) a second apart. */
function filled(n: number, bounds = { maxAgeMs: 15 * 60_000, maxBytes: 64 * 1024 * 1024 }, pad = 0): Journal {
  const j = new Journal(bounds);
  j.snapshotAt(10, T0);
  for (let seq = 11; seq <= 10 + n; seq++) expect(j.push(seq, T0 + (seq - 10) * 1000, frame(seq, pad))).toBe(true);
  return j;
}

describe('Journal: bounds', () => {
  it('keeps nothing before a snapshot went out: no collector could resume from those frames', () => {
    const j = new Journal({ maxAgeMs: 60_000, maxBytes: 1 << 20 });
    expect(j.push(1, T0, frame(1))).toBe(false);
    expect(j.size).toBe(0);
    expect(j.plan(0, T0)).toMatchObject({ kind: 'snapshot', gap: null });
  });

  it('drops frames older than the age bound, by sample time, and moves its base to the last one dropped', () => {
    const j = filled(100, { maxAgeMs: 30_000, maxBytes: 1 << 30 });
    // Newest is at +100 s: frames sampled before +70 s are gone.
    expect(j.base).toBe(79);
    expect(j.frameAfter(79)?.seq).toBe(80);
    expect(j.lastSeq).toBe(110);
    expect(j.size).toBe(31);
    expect(j.droppedByAge).toBe(69);
  });

  it('drops the oldest frames when the byte bound is hit first', () => {
    const one = Buffer.byteLength(frame(11, 1000));
    const j = filled(50, { maxAgeMs: 15 * 60_000, maxBytes: one * 10 + 5 }, 1000);
    expect(j.size).toBe(10);
    expect(j.bytes).toBeLessThanOrEqual(one * 10 + 5);
    expect(j.base).toBe(50);
    expect(j.droppedByBytes).toBe(40);
    expect(j.droppedByAge).toBe(0);
  });

  it('a frame bigger than the whole bound is not kept, and the chain starts after it', () => {
    const j = filled(3, { maxAgeMs: 60_000, maxBytes: 200 });
    expect(j.push(14, T0 + 4000, frame(14, 500))).toBe(false);
    expect(j.size).toBe(0);
    expect(j.base).toBe(14);
    expect(j.push(15, T0 + 5000, frame(15))).toBe(true);
    expect(j.plan(13, T0 + 3000)).toMatchObject({ kind: 'snapshot', gap: { fromSeq: 14, toSeq: 14, seconds: 1 } });
  });

  it('a frame out of sequence breaks the chain rather than leaving a hole in it', () => {
    const j = filled(5);
    expect(j.push(17, T0 + 7000, frame(17))).toBe(false);
    expect(j.chained).toBe(false);
    expect(j.plan(15, T0 + 5000)).toMatchObject({ kind: 'snapshot' });
  });

  it('a snapshot at the seq the frames reach keeps the chain; one at a later seq starts it again', () => {
    const j = filled(5);
    j.snapshotAt(15, T0 + 5000);
    expect(j.size).toBe(5);
    expect(j.plan(12, T0 + 2000)).toEqual({ kind: 'resume', fromSeq: 13, toSeq: 15, frames: 3 });
    // The tick at 16 made no diff (it went out as a snapshot): older frames no longer chain to what follows.
    j.snapshotAt(16, T0 + 6000);
    expect(j.size).toBe(0);
    expect(j.base).toBe(16);
    expect(j.plan(16, T0 + 6000)).toEqual({ kind: 'resume', fromSeq: 17, toSeq: 16, frames: 0 });
  });

  it('is off with a byte or age bound of 0', () => {
    for (const bounds of [{ maxAgeMs: 0, maxBytes: 1 << 20 }, { maxAgeMs: 60_000, maxBytes: 0 }]) {
      const j = new Journal(bounds);
      j.snapshotAt(1, T0);
      expect(j.push(2, T0, frame(2))).toBe(false);
      expect(j.plan(1, T0)).toEqual({ kind: 'snapshot', reason: 'the journal is off', gap: null });
    }
  });
});

describe('Journal: resume decisions', () => {
  it('resumes after the seq the collector holds when the journal reaches back to it, handing the frames out in order', () => {
    const j = filled(20);
    expect(j.plan(25, T0 + 15_000)).toEqual({ kind: 'resume', fromSeq: 26, toSeq: 30, frames: 5 });
    const sent: number[] = [];
    for (let f = j.frameAfter(25); f !== undefined; f = j.frameAfter(f.seq)) sent.push((JSON.parse(f.text) as { seq: number }).seq);
    expect(sent).toEqual([26, 27, 28, 29, 30]);
  });

  it('resumes from the very base: the collector holds the snapshot the chain starts from', () => {
    expect(filled(20).plan(10, T0)).toEqual({ kind: 'resume', fromSeq: 11, toSeq: 30, frames: 20 });
  });

  it('has nothing to send when the collector holds the newest step', () => {
    expect(filled(20).plan(30, T0 + 20_000)).toEqual({ kind: 'resume', fromSeq: 31, toSeq: 30, frames: 0 });
  });

  it('starts over, naming the lost seqs and seconds, when the collector holds less than the journal reaches back to', () => {
    const j = filled(100, { maxAgeMs: 30_000, maxBytes: 1 << 30 });
    // Base 79 was sampled at +69 s; the collector's last step (seq 40) at +30 s.
    const plan = j.plan(40, T0 + 30_000);
    expect(plan).toEqual({ kind: 'snapshot', reason: 'the journal reaches back to seq 80; the collector holds up to seq 40', gap: { fromSeq: 41, toSeq: 79, seconds: 39 } });
  });

  it('says the seconds are unknown when the collector did not say when its step was sampled', () => {
    const j = filled(100, { maxAgeMs: 30_000, maxBytes: 1 << 30 });
    expect(j.plan(40, null)).toMatchObject({ kind: 'snapshot', gap: { fromSeq: 41, toSeq: 79, seconds: null } });
  });

  it('starts over without a gap when the collector holds nothing of this run, or claims more than the agent made', () => {
    const j = filled(5);
    expect(j.plan(null, null)).toEqual({ kind: 'snapshot', reason: 'the collector holds no state of this agent run', gap: null });
    expect(j.plan(99, T0)).toMatchObject({ kind: 'snapshot', gap: null, reason: expect.stringContaining('beyond the newest step') });
  });

  it('starts over after the chain broke (a source lost track)', () => {
    const j = filled(5);
    j.break();
    expect(j.plan(12, T0)).toMatchObject({ kind: 'snapshot', reason: expect.stringContaining('no unbroken chain') });
  });

  it('keeps frames contiguous across many drops (the ring compacts without losing its place)', () => {
    const j = filled(5000, { maxAgeMs: 100_000, maxBytes: 1 << 30 });
    expect(j.size).toBe(101);
    expect(j.base).toBe(4909);
    for (let seq = 4909; seq < 5010; seq++) expect(j.frameAfter(seq)?.seq).toBe(seq + 1);
    expect(j.frameAfter(5010)).toBeUndefined();
    expect(j.frameAfter(4908)).toBeUndefined();
  });
});

describe('journal flags', () => {
  it('reads byte sizes with binary and decimal units, and off', () => {
    expect(parseBytes('64MiB')).toBe(64 * 1024 * 1024);
    expect(parseBytes('512KiB')).toBe(512 * 1024);
    expect(parseBytes('1GB')).toBe(1e9);
    expect(parseBytes('1048576')).toBe(1048576);
    expect(parseBytes('off')).toBe(0);
    for (const bad of ['', 'lots', '-1MiB', '1.5MiB', '99999GiB']) expect(parseBytes(bad), bad).toBeNull();
  });

  it('reads ages in the shared duration syntax, and off', () => {
    expect(parseJournalAge('15m')).toBe(15 * 60_000);
    expect(parseJournalAge('off')).toBe(0);
    expect(parseJournalAge('15')).toBeNull();
  });
});
