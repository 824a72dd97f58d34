import { describe, expect, it } from 'vitest';
import { applyDiff, diffByKey, indexByKey } from '../../contract/diff.ts';
import type { ConntrackEntry } from '../../contract/records.ts';
import { conntrackRearmedSince, sources } from '../../contract/sources.ts';

const spec = sources.conntrack;

function entry(sport: number, state: string, timeout: number, replySrc = '10.27.1.249'): ConntrackEntry {
  return {
    family: 'ipv4', proto: 'tcp', protoNum: 6, timeout, state,
    orig: { src: '10.23.31.87', dst: '10.20.79.226', sport, dport: 31199, extra: null },
    reply: { src: replySrc, dst: '10.23.31.87', sport: 80, dport: sport, extra: null },
    unreplied: state === 'SYN_SENT', assured: state === 'TIME_WAIT', offload: 'none', mark: 0, zone: 0,
    raw: `tcp 6 ${timeout} ${state} sport=${sport}`,
  };
}
const keyed = (...es: ConntrackEntry[]) => indexByKey(es, spec).map;

describe('diffByKey', () => {
  it('reports TIME_WAIT -> SYN_SENT on the same tuple as one change, not a remove and an add (seed 002)', () => {
    const d = diffByKey(keyed(entry(58578, 'TIME_WAIT', 58)), keyed(entry(58578, 'SYN_SENT', 119)), spec);
    expect(d.added).toEqual([]);
    expect(d.removed).toEqual([]);
    expect(d.changed.map((e) => e.state)).toEqual(['SYN_SENT']);
  });

  it('does not send an entry whose timer only counted down', () => {
    const d = diffByKey(keyed(entry(1, 'ESTABLISHED', 431981)), keyed(entry(1, 'ESTABLISHED', 431980)), spec);
    expect(d).toEqual({ added: [], removed: [], changed: [], refreshed: [] });
  });

  it('sends an entry whose timer was re-armed by traffic as refreshed (a retransmitted SYN)', () => {
    const d = diffByKey(keyed(entry(1, 'SYN_SENT', 100)), keyed(entry(1, 'SYN_SENT', 119)), spec);
    expect(d.refreshed.map((e) => e.timeout)).toEqual([119]);
    expect(d.changed).toEqual([]);
    // ESTABLISHED TCP re-arms its 5-day timer with every packet: never sent for that alone.
    expect(diffByKey(keyed(entry(1, 'ESTABLISHED', 100)), keyed(entry(1, 'ESTABLISHED', 300)), spec).refreshed).toEqual([]);
  });

  it('measures a UDP timer held at its maximum against a reference: traffic once it has held 2 s longer than idle would', () => {
    const udp = (timeout: number): ConntrackEntry => ({ ...entry(53, 'x', timeout), proto: 'udp', protoNum: 17, state: null });
    // One second apart, 30 -> 30 cannot be told from rounding; 30 -> 29 is counting down.
    expect(diffByKey(keyed(udp(30)), keyed(udp(30)), spec).refreshed).toHaveLength(0);
    expect(diffByKey(keyed(udp(30)), keyed(udp(29)), spec).refreshed).toHaveLength(0);
    // Against the reference the agent keeps: held at 30 for 3 s is a client still sending; 27 after 3 s is idle.
    expect(conntrackRearmedSince(30, 0, 30, 3_000, false)).toBe(true);
    expect(conntrackRearmedSince(30, 0, 27, 3_000, false)).toBe(false);
    expect(conntrackRearmedSince(431999, 0, 432000, 3_000, true)).toBe(false);
  });

  it('reports a new reply tuple (a different endpoint) as a change', () => {
    const d = diffByKey(keyed(entry(1, 'ESTABLISHED', 5)), keyed(entry(1, 'ESTABLISHED', 5, '10.27.1.250')), spec);
    expect(d.changed).toHaveLength(1);
  });

  it('reports added and removed entries by key', () => {
    const d = diffByKey(keyed(entry(1, 'ESTABLISHED', 5), entry(2, 'ESTABLISHED', 5)), keyed(entry(2, 'ESTABLISHED', 5), entry(3, 'SYN_SENT', 5)), spec);
    expect(d.added.map((e) => e.orig.sport)).toEqual([3]);
    expect(d.removed).toEqual([spec.keyOf(entry(1, 'ESTABLISHED', 5))]);
  });

  it('counts records the spec cannot tell apart instead of hiding them', () => {
    const { map, duplicates } = indexByKey([entry(1, 'ESTABLISHED', 5), entry(1, 'TIME_WAIT', 9)], spec);
    expect(map.size).toBe(1);
    expect(duplicates).toBe(1);
  });
});

describe('applyDiff', () => {
  it('rebuilds the next state from the previous state plus the diff', () => {
    const prev = keyed(entry(1, 'ESTABLISHED', 5), entry(2, 'TIME_WAIT', 5), entry(4, 'ESTABLISHED', 100));
    const next = keyed(entry(2, 'SYN_SENT', 119), entry(3, 'ESTABLISHED', 5), entry(4, 'ESTABLISHED', 300));
    const state = new Map(prev);
    expect(applyDiff(state, diffByKey(prev, next, spec), spec)).toEqual([]);
    expect([...state.keys()].sort()).toEqual([...next.keys()].sort());
    for (const [k, v] of next) expect(state.get(k)?.state).toBe(v.state);
  });

  it('names the keys it could not apply, so the collector can ask for a resync', () => {
    const state = new Map<string, ConntrackEntry>();
    const mismatched = applyDiff(state, { added: [], removed: ['nope'], changed: [entry(9, 'SYN_SENT', 1)], refreshed: [] }, spec);
    expect(mismatched).toEqual(['nope', spec.keyOf(entry(9, 'SYN_SENT', 1))]);
  });
});
