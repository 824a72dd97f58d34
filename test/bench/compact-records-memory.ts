// How many bytes the collector's compact store takes per held conntrack
// record (heap + array buffers, from process.memoryUsage() deltas after a
// forced GC), at 250,000 records, next to the Map of objects it replaced.
// Run with --expose-gc (the bench script does). Prints one JSON line.
import { specOf } from '../../contract/sources.ts';
import type { ConntrackEntry } from '../../contract/records.ts';
import { heldRecordsFor, MapRecords, type HeldRecords } from '../../collector/state/compact-records.ts';
import { lineMaker, recordOf } from './conntrack-lines.ts';

const N = Number(process.env.BENCH_RECORDS ?? 250_000);
const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) {
  console.error('run with node --expose-gc');
  process.exit(2);
}
const spec = specOf('conntrack');

function used(): number {
  gc?.();
  gc?.();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

function measure(make: () => HeldRecords<ConntrackEntry>): { bytesPerRecord: number; putUsPerRecord: number; getUsPerRecord: number } {
  const maker = lineMaker(7, 3);
  // Lines are made (and parsed) in batches and dropped, so only what the store keeps is counted.
  const before = used();
  const store = make();
  const keys: string[] = [];
  let putMs = 0;
  for (let done = 0; done < N; ) {
    const batch: ConntrackEntry[] = [];
    for (let i = 0; i < 10_000 && done < N; i++, done++) batch.push(recordOf(maker.fresh()));
    const t = performance.now();
    for (const r of batch) store.put(spec.keyOf(r), r, 1_700_000_000_000 + done);
    putMs += performance.now() - t;
    if (keys.length < 10_000) keys.push(spec.keyOf(batch[0] as ConntrackEntry));
  }
  const after = used();
  const t = performance.now();
  let hits = 0;
  for (let i = 0; i < 100_000; i++) if (store.get(keys[i % keys.length] ?? '') !== undefined) hits++;
  const getMs = performance.now() - t;
  if (store.size !== N || hits !== 100_000) throw new Error(`store holds ${store.size}, ${hits} hits`);
  return { bytesPerRecord: Math.round((after - before) / N), putUsPerRecord: Number(((putMs * 1000) / N).toFixed(2)), getUsPerRecord: Number(((getMs * 1000) / 100_000).toFixed(2)) };
}

const compact = measure(() => heldRecordsFor('conntrack', spec.keyOf));
const objects = measure(() => new MapRecords<ConntrackEntry>());
console.log(JSON.stringify({ records: N, compact, objects }));
