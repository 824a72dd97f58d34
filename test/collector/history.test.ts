import { describe, expect, it } from 'vitest';
import { NodeHistory } from '../../collector/state/history.ts';
import type { TimelineEntry } from '../../collector/state/node-view.ts';

const rec = (name: string, value: string) => ({ name, value, raw: `${name} = ${value}` });
const snapshot = (time: number): TimelineEntry => ({ seq: 1, time, kind: 'snapshot', changes: [{ source: 'sysctl', added: [rec('a', '1'), rec('b', '1')], removed: [], changed: [], refreshed: [] }] });
const diff = (seq: number, time: number, changed: ReturnType<typeof rec>[], removed: string[] = []): TimelineEntry => ({ seq, time, kind: 'diff', changes: [{ source: 'sysctl', added: [], removed, changed, refreshed: [] }] });

describe('NodeHistory', () => {
  it('starts any slice with a full snapshot of the state at its start, folding what came before', () => {
    const h = new NodeHistory(60_000, 100);
    h.push(snapshot(1_000));
    h.push(diff(2, 2_000, [rec('a', '2')]));
    h.push(diff(3, 3_000, [], ['b']));
    h.push(diff(4, 4_000, [rec('a', '4')]));
    const slice = h.slice(2_500, 10_000);
    expect(slice.map((e) => [e.kind, e.seq])).toEqual([['snapshot', 2], ['diff', 3], ['diff', 4]]);
    expect(slice[0]?.changes[0]?.added).toEqual([rec('a', '2'), rec('b', '1')]);
  });

  it('folds steps that age out of the window into the state it starts from, and reports the count bound', () => {
    const h = new NodeHistory(2_000, 3);
    h.push(snapshot(0));
    for (let i = 1; i <= 5; i++) h.push(diff(i + 1, i * 1_000, [rec('a', String(i))]));
    expect(h.entries.map((e) => e.seq)).toEqual([4, 5, 6]);
    expect(h.slice(0, 10_000)[0]).toMatchObject({ kind: 'snapshot', seq: 3, changes: [{ added: [rec('a', '2'), rec('b', '1')] }] });
    const tight = new NodeHistory(60_000, 2);
    tight.push(snapshot(0));
    tight.push(diff(2, 1, []));
    expect(tight.push(diff(3, 2, []))).toBe(true);
    expect(tight.overflowed).toBe(1);
  });
});
