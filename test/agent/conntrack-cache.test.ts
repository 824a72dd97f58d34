import { describe, expect, it } from 'vitest';
import { createConntrackLineCache, expandConntrack, timerSpan } from '../../agent/conntrack-cache.ts';

const line = (t: number, st: string, unreplied = false, sport = 57756) =>
  `ipv4     2 tcp      6 ${t} ${st} src=198.19.1.10 dst=198.18.64.10 sport=${sport} dport=80 ${unreplied ? '[UNREPLIED] ' : ''}src=198.19.1.11 dst=198.19.1.10 sport=8080 dport=${sport} [ASSURED] mark=0 zone=0 use=2`;
const udp = (t: number) => `ipv4     2 udp      17 ${t} src=198.19.1.10 dst=198.18.64.53 sport=40053 dport=53 src=198.19.2.10 dst=198.19.1.10 sport=5353 dport=40053 [ASSURED] mark=0 zone=0 use=2`;
const feed = (...lines: string[]) => Buffer.from(`${lines.join('\n')}\n`, 'latin1');

describe('conntrack line cache', () => {
  it('follows one tuple through SYN_SENT, ESTABLISHED and TIME_WAIT as changes of one key', () => {
    const cache = createConntrackLineCache();
    expect(cache.parse(feed(line(119, 'SYN_SENT', true)), 0).diff.added).toHaveLength(1);
    let t = 0;
    const states: string[] = [];
    for (const l of [line(431999, 'ESTABLISHED'), line(120, 'TIME_WAIT')]) {
      const d = cache.parse(feed(l), (t += 1000)).diff;
      expect(d.added).toEqual([]);
      expect(d.removed).toEqual([]);
      expect(d.changed).toHaveLength(1);
      states.push(expandConntrack(d.changed[0]!)?.state ?? '?');
    }
    expect(states).toEqual(['ESTABLISHED', 'TIME_WAIT']);
  });

  it('sends nothing for an entry whose timer only counted down', () => {
    const cache = createConntrackLineCache();
    cache.parse(feed(line(120, 'TIME_WAIT')), 0);
    const b = cache.parse(feed(line(118, 'TIME_WAIT')), 2_000);
    expect(b.diff).toEqual({ added: [], removed: [], changed: [], refreshed: [] });
    expect(b.keyed.size).toBe(1);
  });

  it('reports entries that are gone by key, and new ones as added', () => {
    const cache = createConntrackLineCache();
    const first = cache.parse(feed(line(120, 'TIME_WAIT', false, 1000), line(120, 'TIME_WAIT', false, 1001)), 0);
    const gone = [...first.keyed.keys()][0];
    const d = cache.parse(feed(line(119, 'TIME_WAIT', false, 1001), line(119, 'SYN_SENT', true, 1002)), 1_000).diff;
    expect(d.removed).toEqual([gone]);
    expect(d.added.map((e) => expandConntrack(e)?.orig.sport)).toEqual([1002]);
    expect(d.changed).toEqual([]);
  });

  it('sends a UDP entry whose timer a client holds near its maximum, with the line as now printed, and not one counting down', () => {
    const held = createConntrackLineCache();
    held.parse(feed(udp(120)), 0);
    // One second later, 119: could be either. Two seconds later, 120 again: re-armed.
    expect(held.parse(feed(udp(119)), 1_000).diff.refreshed).toEqual([]);
    expect(held.parse(feed(udp(120)), 2_000).diff.refreshed.map((e) => e.raw)).toEqual([udp(120)]);

    const idle = createConntrackLineCache();
    idle.parse(feed(udp(120)), 0);
    for (let s = 1; s <= 5; s++) expect(idle.parse(feed(udp(120 - s)), s * 1_000).diff.refreshed).toEqual([]);
  });

  it('keeps the first of two lines with the same key in one read, and reports no change for the repeat', () => {
    const cache = createConntrackLineCache();
    const r = cache.parse(feed(line(120, 'TIME_WAIT'), line(120, 'SYN_SENT', true)), 0);
    expect(r.keyed.size).toBe(1);
    expect(r.diff.added.map((e) => expandConntrack(e)?.state)).toEqual(['TIME_WAIT']);
    expect(cache.parse(feed(line(119, 'TIME_WAIT'), line(119, 'SYN_SENT', true)), 1_000).diff).toEqual({ added: [], removed: [], changed: [], refreshed: [] });
  });

  it('after a reset, reports that it restarted and holds only what the next read shows', () => {
    const cache = createConntrackLineCache();
    cache.parse(feed(line(120, 'TIME_WAIT', false, 1000), line(120, 'TIME_WAIT', false, 1001)), 0);
    // A read that failed half way: one line was taken in, the rest never came.
    cache.begin(1_000).feed(feed(line(119, 'SYN_SENT', true, 1000)));
    cache.reset();
    const r = cache.parse(feed(line(118, 'SYN_SENT', true, 1000), line(118, 'TIME_WAIT', false, 1002)), 2_000);
    expect(r.restarted).toBe(true);
    expect(r.keyed.size).toBe(2);
    expect([...r.keyed.values()].map((e) => expandConntrack(e)?.orig.sport).sort()).toEqual([1000, 1002]);
    expect(cache.parse(feed(line(117, 'SYN_SENT', true, 1000), line(117, 'TIME_WAIT', false, 1002)), 3_000)).toMatchObject({ restarted: false, diff: { added: [], removed: [], changed: [] } });
  });

  it('hands out a view by key: get, has and size follow the table', () => {
    const cache = createConntrackLineCache();
    const r = cache.parse(feed(line(120, 'TIME_WAIT', false, 1000), udp(30)), 0);
    const [key] = [...r.keyed.keys()];
    expect(r.keyed.size).toBe(2);
    expect(key).toBe('0|tcp|198.19.1.10|1000|198.18.64.10|80|');
    expect(r.keyed.has(key ?? '')).toBe(true);
    expect(r.keyed.get(key ?? '')?.raw).toBe(line(120, 'TIME_WAIT', false, 1000));
    expect(r.keyed.has('0|tcp|198.19.1.10|9|198.18.64.10|80|')).toBe(false);
  });

  it('reports an unreadable line with its line number and skips the conntrack-tools trailer', () => {
    const cache = createConntrackLineCache();
    const r = cache.parse(feed(line(5, 'TIME_WAIT'), 'tcp      6 4', 'conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.'), 0);
    expect(r.keyed.size).toBe(1);
    expect(r.problems).toEqual([{ line: 2, text: 'tcp      6 4', reason: expect.any(String) }]);
  });

  it('finds the timer in procfs, conntrack -L and event lines, and none in an offloaded flow', () => {
    expect(timerSpan('ipv4     2 tcp      6 431999 ESTABLISHED src=1.1.1.1')).toMatchObject({ value: 431999 });
    expect(timerSpan('tcp      6 52 CLOSE_WAIT src=1.1.1.1')).toMatchObject({ value: 52 });
    expect(timerSpan('    [NEW] tcp      6 120 SYN_SENT src=1.1.1.1'.trimStart())).toMatchObject({ value: 120 });
    expect(timerSpan('tcp      6 src=77.172.168.59 dst=178.63.116.246')).toBeNull();
  });
});
