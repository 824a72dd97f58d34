import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { createConntrackLineCache, expandConntrack, timerSpan, type CompactEntry } from '../../agent/conntrack-cache.ts';
import { parseConntrack, parseConntrackLine } from '../../agent/sources/conntrack.ts';
import type { ConntrackEntry } from '../../contract/records.ts';
import { conntrackTimerRearmed, sources } from '../../contract/sources.ts';
import { rng } from '../helpers/rng.ts';

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

// Issue 9: the contract (contract/sources.ts) is the one definition of what a
// conntrack change is. What the cache reports is checked here against an
// independent computation over parsed records: the contract's keyOf and
// sameState, and its re-arm rule measured against the time each entry was
// last reported (conntrackTimerRearmed over the elapsed time), never against
// the cache itself.
const fixture = (path: string) => readFileSync(new URL(path, import.meta.url), 'latin1');
const conntrackSpec = sources.conntrack;

interface Reported {
  added: string[];
  removed: string[];
  changed: string[];
  refreshed: string[];
}

/** What the contract says changed, entry by entry, for one read of the table at `now`. */
function contractModel(): (text: string, now: number) => Reported {
  const kept = new Map<string, { record: ConntrackEntry; refTimeout: number | null; refTime: number }>();
  return (text, now) => {
    const out: Reported = { added: [], removed: [], changed: [], refreshed: [] };
    const seen = new Set<string>();
    for (const record of parseConntrack(text).records) {
      const key = conntrackSpec.keyOf(record);
      // The first of two lines with one key stands, as in diffByKey's index.
      if (seen.has(key)) continue;
      seen.add(key);
      const before = kept.get(key);
      const reported = { record, refTimeout: record.timeout, refTime: now };
      if (before === undefined) out.added.push(key);
      else if (!conntrackSpec.sameState(before.record, record)) out.changed.push(key);
      else if (conntrackTimerRearmed(before.refTimeout, record.timeout, record, now - before.refTime)) out.refreshed.push(key);
      else {
        kept.set(key, { record, refTimeout: before.refTimeout, refTime: before.refTime });
        continue;
      }
      kept.set(key, reported);
    }
    for (const key of [...kept.keys()]) if (!seen.has(key)) (out.removed.push(key), kept.delete(key));
    return out;
  };
}

/** The keys of what the cache reported, sorted like the model's. */
function cacheReport(cache: ReturnType<typeof createConntrackLineCache>, text: string, now: number): Reported {
  const d = cache.parse(Buffer.from(text, 'latin1'), now).diff;
  const keys = (es: readonly CompactEntry[]) => es.map((e) => {
    const r = expandConntrack(e);
    return r === null ? `unreadable ${e.raw}` : conntrackSpec.keyOf(r);
  });
  return { added: keys(d.added), removed: [...d.removed], changed: keys(d.changed), refreshed: keys(d.refreshed) };
}
const sorted = (r: Reported): Reported => ({ added: [...r.added].sort(), removed: [...r.removed].sort(), changed: [...r.changed].sort(), refreshed: [...r.refreshed].sort() });

/** `# t=<ms>` then the table read at that time (lab-acct-capture.sh). */
function timeline(text: string): { t: number; table: string }[] {
  return text.split(/^# t=/m).filter((b) => b !== '').map((b) => {
    const nl = b.indexOf('\n');
    return { t: Number(b.slice(0, nl)), table: b.slice(nl + 1) };
  });
}

const orig = (sport: number) => (key: string) => key.includes(`|${sport}|`);

describe('conntrack line cache against the contract (issue 9)', () => {
  it('on this kernel with nf_conntrack_acct=1: rising counters and delta-time are no change; ASSURED appearing, TIME_WAIT and UDP re-arms are, exactly as the contract says', () => {
    const samples = timeline(fixture('../fixtures/conntrack/lab-acct-timeline.txt'));
    expect(samples).toHaveLength(9);
    const cache = createConntrackLineCache();
    const model = contractModel();
    const reports = samples.map(({ t, table }) => {
      const got = sorted(cacheReport(cache, table, t));
      expect(got, `read at ${t} ms`).toEqual(sorted(model(table, t)));
      return got;
    });
    const after = reports.slice(1);
    const touched = (sport: number) => after.flatMap((r, i) => [...r.changed.filter(orig(sport)).map(() => `changed@${i + 1}`), ...r.refreshed.filter(orig(sport)).map(() => `refreshed@${i + 1}`)]);
    // The busy ESTABLISHED flow: packets= and bytes= rise every read in both directions, its timer is re-armed; nothing to send.
    expect(samples.map((s) => /sport=40001 .*? packets=(\d+)/.exec(s.table)?.[1])).toEqual([...new Set(samples.map((s) => /sport=40001 .*? packets=(\d+)/.exec(s.table)?.[1]))]);
    expect(touched(40001)).toEqual([]);
    // The idle ESTABLISHED flow only counts down; delta-time= rises on every line.
    expect(touched(40002)).toEqual([]);
    // The closed flow: ESTABLISHED to TIME_WAIT once, then counting down.
    expect(touched(40003)).toEqual(['changed@4']);
    // The answered UDP flow: ASSURED appears (timer 29 -> 119) at 2 s, then a client holding the timer is sent as re-armed.
    expect(touched(41053)[0]).toBe('changed@2');
    expect(touched(41053).slice(1).length).toBeGreaterThan(0);
    expect(touched(41053).slice(1).every((s) => s.startsWith('refreshed@'))).toBe(true);
    // The unanswered one, UNREPLIED with its 30 s timer held by the client: re-armed, never changed.
    expect(touched(41054).length).toBeGreaterThan(0);
    expect(touched(41054).every((s) => s.startsWith('refreshed@'))).toBe(true);
    // A query answered once: added, then left to count down.
    expect(reports.map((r) => r.added.filter(orig(41055)).length)).toEqual([0, 0, 0, 0, 0, 0, 1, 0, 0]);
    expect(touched(41055)).toEqual([]);
  });

  it('a changing use= (or counters, or delta-time) on verbatim lines, with timers counting down, is no change', () => {
    const lines = [
      ...fixture('../fixtures/conntrack/netlink-876-conntrack-L-established-closewait.txt').trim().split('\n'),
      ...fixture('../fixtures/conntrack/k8s-91216-e2e-dns-tcp-timewait-excerpt.txt').trim().split('\n').slice(2),
      ...fixture('../fixtures/conntrack/ubicloud-pr1009-flowtable-offload-no-timeout.txt').trim().split('\n').slice(0, -1),
      ...fixture('../fixtures/conntrack/lab-proc-nf-conntrack.txt').trim().split('\n'),
      ...fixture('../fixtures/conntrack/lab-conntrack-L-extended.txt').trim().split('\n').slice(1),
    ];
    expect(lines.every((l) => !('error' in parseConntrackLine(l)))).toBe(true);
    const cache = createConntrackLineCache();
    const model = contractModel();
    const table = (s: number) =>
      `${lines
        .map((l) =>
          countDown(l, s)
            .replace(/ use=(\d+)/, (_m, u: string) => ` use=${Number(u) + (s % 3)}`)
            .replace(/ delta-time=(\d+)/, (_m, d: string) => ` delta-time=${Number(d) + s}`)
            .replace(/ packets=(\d+) bytes=(\d+)/g, (_m, p: string, b: string) => ` packets=${Number(p) + s * 7} bytes=${Number(b) + s * 7 * 1448}`),
        )
        .join('\n')}\n`;
    const first = cacheReport(cache, table(0), 0);
    expect(first.added).toHaveLength(model(table(0), 0).added.length);
    for (let s = 1; s <= 5; s++) {
      const text = table(s);
      expect(text).not.toBe(table(s - 1));
      const empty = { added: [], removed: [], changed: [], refreshed: [] };
      expect(model(text, s * 1_000)).toEqual(empty);
      expect(cacheReport(cache, text, s * 1_000), `read ${s}`).toEqual(empty);
    }
  });

  it('reports a reused tuple going TIME_WAIT -> SYN_SENT (seed 002), ASSURED appearing and a NAT change, with counters moving too', () => {
    const seed = fixture('../fixtures/conntrack/seed-002-timewait-to-synsent-timeline.txt').split('\n').filter((l) => l.startsWith('ipv4 '));
    const [tw60, tw58, syn119] = seed;
    const cache = createConntrackLineCache();
    const model = contractModel();
    const step = (text: string, now: number) => {
      const got = sorted(cacheReport(cache, text, now));
      expect(got).toEqual(sorted(model(text, now)));
      return got;
    };
    step(`${tw60}\n`, 0);
    expect(step(`${tw58?.replace('use=2', 'use=3')}\n`, 2_000)).toMatchObject({ changed: [], refreshed: [] });
    expect(step(`${syn119}\n`, 4_000).changed).toHaveLength(1);

    const udp = fixture('../fixtures/conntrack/lab-proc-nf-conntrack.txt').split('\n').find((l) => l.includes('sport=60170'));
    expect(udp).toBeDefined();
    const u = udp ?? '';
    step(`${u}\n`, 0);
    const assured = u.replace(' 29 src=', ' 119 src=').replace(' mark=0', ' [ASSURED] mark=0').replace(/packets=1 bytes=29/g, 'packets=2 bytes=58');
    expect(step(`${assured}\n`, 1_000).changed).toHaveLength(1);
    // The reply now from another pod: kube-proxy's rules changed and the entry is a new NAT on the same tuple.
    const renat = assured.replace('src=10.244.0.5 dst=10.244.0.5 sport=5353', 'src=10.244.0.9 dst=10.244.0.5 sport=5353').replace(/packets=2 bytes=58/g, 'packets=3 bytes=87');
    expect(step(`${renat}\n`, 2_000).changed).toHaveLength(1);
    // Held at 119 by a client sending every 200 ms: re-armed, per conntrackRearmedSince.
    expect(step(`${renat.replace(/packets=3 bytes=87/g, 'packets=8 bytes=232')}\n`, 3_000)).toMatchObject({ changed: [], refreshed: [] });
    expect(step(`${renat.replace(/packets=3 bytes=87/g, 'packets=13 bytes=377')}\n`, 4_000).refreshed).toHaveLength(1);
  });

  it('property: over seeded random mutations of verbatim lines the cache reports exactly the keys the contract does', () => {
    const pool = [
      ...fixture('../fixtures/conntrack/lab-proc-nf-conntrack.txt').trim().split('\n'),
      ...fixture('../fixtures/conntrack/seed-002-nf-conntrack-syn-sent.txt').trim().split('\n'),
      ...fixture('../fixtures/conntrack/netlink-876-conntrack-L-established-closewait.txt').trim().split('\n'),
      ...fixture('../fixtures/conntrack/k8s-91216-e2e-dns-tcp-timewait-excerpt.txt').trim().split('\n').slice(2),
      ...fixture('../fixtures/conntrack/ubicloud-pr1009-flowtable-offload-no-timeout.txt').trim().split('\n').slice(0, -1),
      ...timeline(fixture('../fixtures/conntrack/lab-acct-timeline.txt')).flatMap((s) => s.table.trim().split('\n')),
    ].filter((l) => !('error' in parseConntrackLine(l)));
    for (const seed of [1, 2, 3, 9, 42]) {
      const rnd = rng(seed);
      const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
      let sport = 20000;
      /** A pool line on a tuple of its own (fresh source port), so entries are new unless a mutation reuses one. */
      const fresh = (): string => {
        const l = pick(pool);
        const p = /sport=(\d+)/.exec(l)?.[1];
        if (p === undefined) return l;
        sport++;
        return l.replace(`sport=${p}`, `sport=${sport}`).replace(new RegExp(`dport=${p}( |$)`), `dport=${sport}$1`);
      };
      let table = Array.from({ length: 40 }, fresh);
      const cache = createConntrackLineCache();
      const model = contractModel();
      let now = 0;
      const counts = { changed: 0, refreshed: 0, quiet: 0 };
      for (let step = 0; step < 60; step++) {
        const elapsed = 700 + Math.floor(rnd() * 700);
        now += elapsed;
        table = table.flatMap((l): string[] => {
          const r = rnd();
          if (r < 0.03) return [];
          if (r < 0.06) return [l, fresh()];
          return [mutate(l, rnd, Math.round(elapsed / 1000))];
        });
        const text = `${table.join('\n')}\n`;
        const expected = sorted(model(text, now));
        expect(sorted(cacheReport(cache, text, now)), `seed ${seed}, read ${step}`).toEqual(expected);
        counts.changed += expected.changed.length;
        counts.refreshed += expected.refreshed.length;
        if (expected.changed.length + expected.refreshed.length === 0) counts.quiet++;
      }
      // The mutations exercise every outcome, not only the quiet one.
      expect(counts.changed).toBeGreaterThan(10);
      expect(counts.refreshed).toBeGreaterThan(10);
    }
  });
});

/** The timer of a line, `s` seconds on (never below 0), or the line as it is without one. */
function countDown(line: string, s: number): string {
  const span = timerSpan(line);
  return span === null ? line : line.slice(0, span.start) + String(Math.max(0, span.value - s)) + line.slice(span.end);
}

const TCP_STATES = ['SYN_SENT', 'SYN_RECV', 'ESTABLISHED', 'FIN_WAIT', 'CLOSE_WAIT', 'LAST_ACK', 'TIME_WAIT', 'CLOSE'];

/** What a second does to a conntrack line: mostly counters, use= and the timer; now and then a state, a flag or a NAT. */
function mutate(line: string, rnd: () => number, seconds: number): string {
  let l = line.replace(/ packets=(\d+) bytes=(\d+)/g, (m, p: string, b: string) => (rnd() < 0.5 ? m : ` packets=${Number(p) + 3} bytes=${Number(b) + 3 * 576}`));
  l = l.replace(/ delta-time=(\d+)/, (_m, d: string) => ` delta-time=${Number(d) + seconds}`);
  if (rnd() < 0.2) l = l.replace(/ use=(\d+)/, () => ` use=${1 + Math.floor(rnd() * 4)}`);
  const span = timerSpan(l);
  if (span !== null) {
    const r = rnd();
    // Re-armed to about where it was (traffic), or counting down.
    const timer = r < 0.25 ? span.value + seconds : Math.max(0, span.value - seconds);
    l = l.slice(0, span.start) + String(timer) + l.slice(span.end);
  }
  const r = rnd();
  if (r < 0.03) {
    const state = TCP_STATES.find((s) => l.includes(` ${s} `));
    if (state !== undefined) l = l.replace(` ${state} `, ` ${TCP_STATES[Math.floor(rnd() * TCP_STATES.length)] ?? state} `);
  } else if (r < 0.05 && !l.includes('[ASSURED]')) l = l.replace(' [UNREPLIED]', '').replace(' mark=', ' [ASSURED] mark=');
  else if (r < 0.07) l = l.replace(/ mark=(\d+)/, (_m, m: string) => ` mark=${Number(m) + 1}`);
  else if (r < 0.09) {
    // The reply tuple's source: the endpoint the entry NATs to.
    const reply = /(\] | )src=(\S+)( dst=\S+ (?:sport|type|srckey)=)/g;
    let n = 0;
    l = l.replace(reply, (m, pre: string, src: string, rest: string) => (++n === 2 ? `${pre}src=${src.replace(/\d+$/, (d) => String((Number(d) + 1) % 250))}${rest}` : m));
  }
  return l;
}

