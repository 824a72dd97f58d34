import { describe, expect, it } from 'vitest';
import { compactConntrackSpec, createConntrackLineCache, expandConntrack, timerSpan } from '../../agent/conntrack-cache.ts';
import { diffByKey } from '../../contract/diff.ts';

const line = (t: number, st: string, unreplied = false, sport = 57756) =>
  `ipv4     2 tcp      6 ${t} ${st} src=198.19.1.10 dst=198.18.64.10 sport=${sport} dport=80 ${unreplied ? '[UNREPLIED] ' : ''}src=198.19.1.11 dst=198.19.1.10 sport=8080 dport=${sport} [ASSURED] mark=0 zone=0 use=2`;
const udp = (t: number) => `ipv4     2 udp      17 ${t} src=198.19.1.10 dst=198.18.64.53 sport=40053 dport=53 src=198.19.2.10 dst=198.19.1.10 sport=5353 dport=40053 [ASSURED] mark=0 zone=0 use=2`;
const feed = (...lines: string[]) => Buffer.from(`${lines.join('\n')}\n`, 'latin1');

describe('conntrack line cache', () => {
  it('follows one tuple through SYN_SENT, ESTABLISHED and TIME_WAIT as changes of one key', () => {
    const cache = createConntrackLineCache();
    let prev = cache.parse(feed(line(119, 'SYN_SENT', true)), 0).keyed;
    let t = 0;
    const states: string[] = [];
    for (const l of [line(431999, 'ESTABLISHED'), line(120, 'TIME_WAIT')]) {
      const next = cache.parse(feed(l), (t += 1000)).keyed;
      const d = diffByKey(prev, next, compactConntrackSpec);
      expect(d.added).toEqual([]);
      expect(d.changed).toHaveLength(1);
      states.push(expandConntrack(d.changed[0]!)?.state ?? '?');
      prev = next;
    }
    expect(states).toEqual(['ESTABLISHED', 'TIME_WAIT']);
  });

  it('keeps an entry whose timer only counted down as the same object, so nothing is sent', () => {
    const cache = createConntrackLineCache();
    const a = cache.parse(feed(line(120, 'TIME_WAIT')), 0).keyed;
    const b = cache.parse(feed(line(118, 'TIME_WAIT')), 2_000).keyed;
    expect([...b.values()][0]).toBe([...a.values()][0]);
    expect(diffByKey(a, b, compactConntrackSpec)).toEqual({ added: [], removed: [], changed: [], refreshed: [] });
  });

  it('sends a UDP entry whose timer a client holds near its maximum, with the line as now printed, and not one counting down', () => {
    const held = createConntrackLineCache();
    const a = held.parse(feed(udp(120)), 0).keyed;
    // One second later, 119: could be either. Two seconds later, 120 again: re-armed.
    const b = held.parse(feed(udp(119)), 1_000).keyed;
    expect(diffByKey(a, b, compactConntrackSpec).refreshed).toEqual([]);
    const c = held.parse(feed(udp(120)), 2_000).keyed;
    expect(diffByKey(b, c, compactConntrackSpec).refreshed.map((e) => e.raw)).toEqual([udp(120)]);

    const idle = createConntrackLineCache();
    let prev = idle.parse(feed(udp(120)), 0).keyed;
    for (let s = 1; s <= 5; s++) {
      const next = idle.parse(feed(udp(120 - s)), s * 1_000).keyed;
      expect(diffByKey(prev, next, compactConntrackSpec).refreshed).toEqual([]);
      prev = next;
    }
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
