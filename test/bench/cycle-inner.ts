// Runs inside the bench namespace: fills the table, measures, prints one JSON line.
import { execFileSync, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createHostIO } from '../../agent/host-io.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { encode, SNAPSHOT_CHUNK } from '../../contract/protocol.ts';

const [nText = '10000', dir = '/tmp'] = process.argv.slice(2);
const n = Number(nText);

const entry = (i: number, salt: number) =>
  `-I -p tcp -s 10.${salt}.${(i >> 8) & 255}.${i & 255} -d 10.250.0.1 --sport ${1024 + (i % 60000)} --dport 80 --state ESTABLISHED -t 3000 -u ASSURED`;
const del = (i: number, salt: number) => `-D -p tcp -s 10.${salt}.${(i >> 8) & 255}.${i & 255} -d 10.250.0.1 --sport ${1024 + (i % 60000)} --dport 80`;
function load(lines: string[]): void {
  const file = join(dir, `ct-${process.pid}.txt`);
  writeFileSync(file, `${lines.join('\n')}\n`);
  execFileSync('conntrack', ['-R', file], { stdio: 'ignore' });
}
load(Array.from({ length: n }, (_, i) => entry(i, 1)));

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
function timeCat(): number {
  const t0 = performance.now();
  spawnSync('cat', ['/proc/net/nf_conntrack'], { maxBuffer: 1 << 30 });
  return performance.now() - t0;
}

const io = createHostIO();
const state = new NodeState(createSamplers().filter((s) => s.source === 'conntrack'), io);
async function cycle(): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  const r = await state.tick();
  const text = encode({ v: 1, type: 'diff', seq: 1, time: r.time, changes: r.changes, status: r.statusChanges });
  return { ms: performance.now() - t0, bytes: Buffer.byteLength(text) };
}

const first = await cycle();
const reads: number[] = [];
const cycles: number[] = [];
for (let k = 0; k < 5; k++) {
  reads.push(timeCat());
  cycles.push((await cycle()).ms);
}
let snapshotBytes = 0;
for (const chunk of state.snapshot(SNAPSHOT_CHUNK)) snapshotBytes += Buffer.byteLength(encode({ v: 1, type: 'snapshot', seq: 1, time: 0, ...chunk }));
// 1% churn: half removed, half new.
const churn = Math.max(1, Math.floor(n / 200));
load([...Array.from({ length: churn }, (_, i) => del(i, 1)), ...Array.from({ length: churn }, (_, i) => entry(i, 2))]);
const churned = await cycle();
console.log(JSON.stringify({
  readMs: Math.round(median(reads)), cycleMs: Math.round(median(cycles)), firstCycleMs: Math.round(first.ms),
  diffBytes: churned.bytes, snapshotBytes,
}));
