// The compact store must be indistinguishable from the Map of objects it
// replaced: same records (field for field, and the same JSON, key order
// included), same read times, same iteration order, through a seeded random
// run of puts and deletes that also grows, compacts and empties the store.
// The model is a plain Map beside it.
import { describe, expect, it } from 'vitest';
import { parseConntrackLine } from '../../../agent/sources/conntrack.ts';
import { parseIpvsConn } from '../../../agent/sources/ipvs-conn.ts';
import type { ConntrackEntry, IpvsConnection } from '../../../contract/records.ts';
import { specOf } from '../../../contract/sources.ts';
import { CompactRecords, heldRecordsFor, type HeldRecords } from '../../../collector/state/compact-records.ts';
import { rng } from '../../helpers/rng.ts';
import { lineMaker, recordOf } from '../../bench/conntrack-lines.ts';


function conntrack(line: string): ConntrackEntry {
  const r = parseConntrackLine(line);
  if ('error' in r) throw new Error(r.error);
  return r;
}

/** Lines of every shape the parser reads, plus records no parser makes (what a hostile agent may send). */
function conntrackMaker(r: () => number): () => ConntrackEntry {
  const int = (lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
  // A small tuple space, so that puts hit held keys and deletes find them.
  const ip = (): string => `10.${int(0, 1)}.${int(0, 3)}.${int(1, 9)}`;
  return () => {
    const k = r();
    const [a, b, c] = [ip(), ip(), ip()];
    const [p, q] = [int(1, 40), int(1, 3)];
    if (k < 0.35) return conntrack(`ipv4     2 tcp      6 ${int(1, 432000)} ${['ESTABLISHED', 'TIME_WAIT', 'SYN_SENT'][int(0, 2)]} src=${a} dst=${b} sport=${p} dport=${q} src=${c} dst=${a} sport=${q} dport=${p} [ASSURED] mark=${int(0, 2)} zone=0 use=2`);
    if (k < 0.5) return conntrack(`ipv4     2 udp      17 ${int(1, 180)} src=${a} dst=${b} sport=${p} dport=53 [UNREPLIED] src=${c} dst=${a} sport=53 dport=${p} mark=0 zone=${int(0, 1)} use=1`);
    if (k < 0.6) return conntrack(`ipv6     10 tcp      6 ${int(1, 99)} SYN_SENT src=fd00:0000:0000:0000:0000:0000:0000:00${int(10, 15)} dst=fd00::a sport=${p} dport=${q} [UNREPLIED] src=fd00::b dst=fd00::${int(10, 15)} sport=${q} dport=${p} mark=0 zone=0 use=2`);
    if (k < 0.68) return conntrack(`ipv4     2 icmp     1 ${int(1, 29)} src=${a} dst=${b} type=8 code=0 id=${p} src=${c} dst=${a} type=0 code=0 id=${p} mark=0 zone=0 use=2`);
    if (k < 0.72) return conntrack(`tcp      6 src=${a} dst=${b} sport=${p} dport=${q} src=${c} dst=${a} sport=${q} dport=${p} [OFFLOAD] mark=0 use=1`);
    const base = conntrack(`ipv4     2 tcp      6 ${int(1, 99)} CLOSE src=${a} dst=${b} sport=${p} dport=${q} src=${c} dst=${a} sport=${q} dport=${p} mark=0 zone=0 use=2`);
    // Schema-valid records that do not fit the columns, or fit only by care: kept as they came.
    const odd: ConntrackEntry[] = [
      { ...base, raw: `${base.raw} é` },
      { ...base, raw: `${base.raw}\ud800` },
      { ...base, orig: { ...base.orig, src: `010.0.0.${int(1, 2)}` } },
      { ...base, orig: { ...base.orig, dst: '255.255.255.255' }, reply: { ...base.reply, dst: '0.0.0.0' } },
      { ...base, mark: 0xffffffff, zone: 70_000, timeout: -5 },
      { ...base, mark: null, state: null, timeout: null },
      { ...base, protoNum: 2 ** 40 },
      { ...base, reply: { ...base.reply, sport: 70_000 } },
      rawFirst(base),
      { ...base, raw: 'x'.repeat(70_000) },
      { ...base, raw: '' },
    ];
    return odd[int(0, odd.length - 1)] ?? base;
  };
}

/** The same record with `raw` as its first key: a JSON of it differs, so the store must keep it as it came. */
function rawFirst(e: ConntrackEntry): ConntrackEntry {
  const { raw, ...rest } = e;
  return { raw, ...rest };
}

function ipvsMaker(r: () => number): () => IpvsConnection {
  const int = (lo: number, hi: number): number => lo + Math.floor(r() * (hi - lo + 1));
  return () => {
    const text = `${['TCP', 'UDP'][int(0, 1)]} ${String(int(0, 14)).padStart(2, '0')}:${String(int(0, 59)).padStart(2, '0')}  ${['ESTABLISHED', 'TIME_WAIT', 'SYN_RECV', 'NONE'][int(0, 3)]}   10.0.0.${int(1, 5)}:${int(1, 30)}  ${r() < 0.2 ? '[fd00::1]' : '10.96.0.1'}:80 10.244.0.${int(1, 9)}:8080`;
    const rec = parseIpvsConn(text).records[0];
    if (rec === undefined) throw new Error(`ipvs line not read: ${text}`);
    return r() < 0.05 ? { ...rec, client: { port: rec.client.port, address: rec.client.address } } : rec;
  };
}

function expectSame<T>(store: HeldRecords<T>, model: Map<string, { r: T; at: number }>, probe: readonly string[]): void {
  expect(store.size).toBe(model.size);
  for (const k of probe) {
    expect(store.has(k)).toBe(model.has(k));
    expect(store.get(k)).toEqual(model.get(k)?.r);
    expect(store.readAt(k)).toBe(model.get(k)?.at);
  }
}

function expectSameOrder<T>(store: ReadonlyMap<string, T>, model: Map<string, { r: T }>): void {
  // Order and JSON (key order included) as the Map gives them.
  expect(JSON.stringify([...store.entries()])).toBe(JSON.stringify([...model].map(([k, v]) => [k, v.r])));
  expect([...store.keys()]).toEqual([...model.keys()]);
  const seen: string[] = [];
  store.forEach((_, k) => seen.push(k));
  expect(seen).toEqual([...model.keys()]);
}

function run<T extends object>(make: () => HeldRecords<T>, record: () => T, keyOf: (r: T) => string, r: () => number, steps: number): void {
  const store = make();
  const model = new Map<string, { r: T; at: number }>();
  const keys: string[] = [];
  let frozen: { copy: HeldRecords<T>; model: Map<string, { r: T; at: number }> } | null = null;
  for (let step = 0; step < steps; step++) {
    const at = 1_700_000_000_000 + step * 1000;
    const op = r();
    if (op < 0.6) {
      const rec = record();
      const k = keyOf(rec);
      store.put(k, rec, at);
      // Map.set keeps a held key's place: so must the store.
      const held = model.get(k);
      if (held) {
        held.r = rec;
        held.at = at;
      } else model.set(k, { r: rec, at });
      keys.push(k);
    } else if (op < 0.97) {
      const k = keys[Math.floor(r() * keys.length)] ?? 'none';
      expect(store.delete(k)).toBe(model.delete(k));
    } else if (op < 0.99) {
      // Empty it whole: the store starts over.
      for (const k of [...model.keys()]) expect(store.delete(k)).toBe(true);
      model.clear();
    } else {
      frozen = { copy: store.copy(), model: new Map([...model].map(([k, v]) => [k, { ...v }])) };
    }
    const probe = [keys[Math.floor(r() * keys.length)] ?? 'x', keys.at(-1) ?? 'y', 'no such key'];
    expectSame(store, model, probe);
    if (step % 97 === 0) expectSameOrder(store, model);
    if (frozen !== null && step % 53 === 0) {
      expectSameOrder(frozen.copy, frozen.model);
      expectSame(frozen.copy, frozen.model, probe);
    }
  }
  expectSameOrder(store, model);
}

describe('compact record store', () => {
  it('stays within 1.3× of its compacted size under a steady churn of realistic entries (a third added, a third removed, a third moved each second)', () => {
    const keyOf = specOf('conntrack').keyOf;
    const store = heldRecordsFor('conntrack', keyOf) as CompactRecords<ConntrackEntry>;
    const maker = lineMaker(7, 0);
    const r = rng(7);
    const lines: string[] = [];
    while (lines.length < 5_000) {
      const line = maker.fresh();
      const key = keyOf(recordOf(line));
      if (store.has(key)) continue;
      store.put(key, recordOf(line), 0);
      lines.push(line);
    }
    // What the same records take when packed afresh: a copy is rebuilt compacted.
    const packed = (): number => store.copy().bufferBytes;
    let worst = 0;
    for (let second = 1; second <= 600; second++) {
      for (let i = 0; i < 50; i++) {
        const what = i % 3;
        if (what === 0) {
          const line = maker.fresh();
          const key = keyOf(recordOf(line));
          if (store.has(key)) continue;
          store.put(key, recordOf(line), second);
          lines.push(line);
        } else {
          const at = Math.floor(r() * lines.length);
          const line = lines[at] ?? '';
          if (what === 1) {
            store.delete(keyOf(recordOf(line)));
            lines[at] = lines.at(-1) ?? '';
            lines.pop();
          } else {
            const moved = maker.moved(line);
            store.put(keyOf(recordOf(moved)), recordOf(moved), second);
            lines[at] = moved;
          }
        }
      }
      if (second % 10 === 0) worst = Math.max(worst, store.bufferBytes / packed());
    }
    expect(store.size).toBe(lines.length);
    expect(worst).toBeGreaterThan(1);
    expect(worst).toBeLessThan(1.3);
  });

  it('holds conntrack records exactly as a Map would, through a seeded run of puts, deletes, compactions and copies', () => {
    const spec = specOf('conntrack');
    for (const seed of [1, 2, 3]) {
      const r = rng(seed);
      run(() => heldRecordsFor('conntrack', spec.keyOf), conntrackMaker(r), spec.keyOf, r, 6_000);
    }
  });

  it('holds IPVS connections exactly as a Map would', () => {
    const spec = specOf('ipvs-conn');
    const r = rng(9);
    run(() => heldRecordsFor('ipvs-conn', spec.keyOf), ipvsMaker(r), spec.keyOf, r, 4_000);
  });

  it('keeps records from the parser compact, and the odd ones as they came', () => {
    const spec = specOf('conntrack');
    const store = heldRecordsFor('conntrack', spec.keyOf);
    expect(store).toBeInstanceOf(CompactRecords);
    const compact = store as CompactRecords<ConntrackEntry>;
    const line = 'ipv4     2 tcp      6 431999 ESTABLISHED src=10.244.1.23 dst=10.96.0.10 sport=43122 dport=443 src=10.244.2.5 dst=10.244.1.23 sport=8443 dport=43122 [ASSURED] mark=0 zone=0 use=2';
    const rec = conntrack(line);
    compact.put(spec.keyOf(rec), rec, 5);
    expect(compact.uncompacted).toBe(0);
    const odd = { ...rec, raw: `${line} ✓` };
    compact.put(spec.keyOf(odd), odd, 6);
    expect(compact.uncompacted).toBe(1);
    expect(compact.get(spec.keyOf(rec))).toEqual(odd);
    expect(heldRecordsFor('sysctl', specOf('sysctl').keyOf)).not.toBeInstanceOf(CompactRecords);
  });
});
