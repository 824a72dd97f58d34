// Reconnects over real sockets: a real Agent (recorded node outputs, 100 ms
// ticks) and a real CollectorServer. While the collector is away the node
// changes (a TIME_WAIT entry reopened as SYN_SENT on the same tuple, an entry
// that comes and goes); when it is back, the agent's journal must bring it
// every step, or, when the journal no longer reaches back, a snapshot and a
// log line naming the gap.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import { createPipeline, type Pipeline } from '../../collector/pipeline.ts';
import { Store } from '../../collector/store/store.ts';
import type { ConntrackEntry } from '../../contract/records.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { captureLog, waitFor, type CapturedLog } from '../helpers/capture-log.ts';

// Seed 002's client tuple, as /proc/net/nf_conntrack prints it.
const TIME_WAIT =
  'ipv4     2 tcp      6 60 TIME_WAIT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 [ASSURED] mark=0 zone=0 use=2';
const SYN_SENT =
  'ipv4     2 tcp      6 119 SYN_SENT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 [UNREPLIED] src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 mark=0 zone=0 use=2';
const CAME_AND_WENT =
  'ipv4     2 tcp      6 107 SYN_SENT src=10.27.2.92 dst=10.27.1.245 sport=37912 dport=18080 [UNREPLIED] src=10.27.1.245 dst=10.27.2.92 sport=18080 dport=37912 mark=0 zone=0 use=2';
const STAYS =
  'ipv4     2 tcp      6 431999 ESTABLISHED src=10.27.2.92 dst=10.27.1.246 sport=40000 dport=443 src=10.27.1.246 dst=10.27.2.92 sport=443 dport=40000 [ASSURED] mark=0 zone=0 use=2';

const facts: NodeFacts = { hostname: 'node-a', kernel: '6.1.0', os: 'test', arch: 'x64', cpus: 2, memoryBytes: 1, interfaces: [] };

interface Up {
  readonly pipeline: Pipeline;
  readonly log: CapturedLog;
  readonly port: number;
  /** Closes the listener and every agent socket; the pipeline (and its memory) stays. */
  down(): Promise<void>;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function collectorUp(port: number, dataDir: string | null): Promise<Up> {
  const log = captureLog();
  const store = dataDir === null ? null : Store.open(dataDir, log.log, { windowMs: 15 * 60_000 });
  const pipeline = createPipeline({ log: log.log, store });
  const server = new CollectorServer({ collector: pipeline.collector, log: log.log, token: null, bundles: pipeline.bundles, services: pipeline.services });
  const addr = await server.listen({ host: '127.0.0.1', port });
  if (typeof addr === 'string') throw new Error('expected a TCP address');
  let closed: Promise<void> | null = null;
  const down = () => (closed ??= server.close());
  cleanups.push(async () => {
    await down();
    pipeline.store?.close();
  });
  return { pipeline, log, port: addr.port, down };
}

/** A new listener for the same pipeline on the same port: the collector process never went away. */
async function relisten(c: Up): Promise<void> {
  const server = new CollectorServer({ collector: c.pipeline.collector, log: c.log.log, token: null, bundles: c.pipeline.bundles, services: c.pipeline.services });
  await server.listen({ host: '127.0.0.1', port: c.port });
  cleanups.push(() => server.close());
}

function agentUp(port: number, recording: Map<string, string>, journal?: { maxAgeMs: number; maxBytes: number }) {
  const log = captureLog();
  const agent = new Agent({
    node: 'node-a',
    collectorUrl: `ws://127.0.0.1:${port}`,
    intervalMs: 100,
    token: null,
    version: 'test',
    state: new NodeState(createSamplers(), createRecordedIO(() => recording)),
    log: log.log,
    readFacts: () => Promise.resolve(facts),
    ...(journal ? { journal } : {}),
  });
  agent.start();
  cleanups.push(() => agent.stop());
  return { agent, log };
}

const states = (p: Pipeline): Map<string, string | null> =>
  new Map([...p.collector.nodes.get('node-a')?.recordMap('conntrack').values() ?? []].map((e: ConntrackEntry) => [`${e.orig.src}:${e.orig.sport}>${e.orig.dst}:${e.orig.dport}`, e.state]));

/** The conntrack states a timeline's steps went through, per tuple, in order. */
function statesOver(p: Pipeline): Map<string, (string | null)[]> {
  const out = new Map<string, (string | null)[]>();
  for (const e of p.collector.timeline('node-a'))
    for (const c of e.changes) {
      if (c.source !== 'conntrack') continue;
      for (const r of [...c.added, ...c.changed] as ConntrackEntry[]) {
        const k = `${r.orig.src}:${r.orig.sport}>${r.orig.dst}:${r.orig.dport}`;
        out.set(k, [...(out.get(k) ?? []), r.state]);
      }
      for (const k of c.removed) out.set(`removed ${k}`, []);
    }
  return out;
}

const REUSED = '10.23.31.87:58578>10.20.79.226:31199';
const CAME = '10.27.2.92:37912>10.27.1.245:18080';

/** Changes the node while the collector is away: the reuse, and an entry that appears for a few ticks and goes. */
async function changeWhileDown(recording: Map<string, string>): Promise<void> {
  recording.set('/proc/net/nf_conntrack', `${SYN_SENT}\n${STAYS}\n${CAME_AND_WENT}\n`);
  await new Promise((r) => setTimeout(r, 400));
  recording.set('/proc/net/nf_conntrack', `${SYN_SENT}\n${STAYS}\n`);
  await new Promise((r) => setTimeout(r, 400));
}

describe('an agent reconnecting to its collector', { timeout: 20_000 }, () => {
  it('after a network cut, sends the steps the collector missed from its journal: no snapshot, nothing lost', async () => {
    const recording = new Map([['/proc/net/nf_conntrack', `${TIME_WAIT}\n${STAYS}\n`]]);
    const c = await collectorUp(0, null);
    const a = agentUp(c.port, recording);
    await waitFor('the first snapshot', () => c.log.find('snapshot applied'));
    await waitFor('a few diffs', () => (c.pipeline.collector.nodes.get('node-a')?.lastSeq ?? 0) >= 4);
    await c.down();
    await changeWhileDown(recording);
    await relisten(c);
    const resumed = await waitFor('the agent resuming', () => a.log.find(/^resuming/), 10_000);
    expect(resumed.frames).toBeGreaterThan(3);
    await waitFor('the collector caught up', () => states(c.pipeline).get(REUSED) === 'SYN_SENT' && !states(c.pipeline).has(CAME));
    expect(c.log.lines.filter((l) => l.msg === 'snapshot applied')).toHaveLength(1);
    expect(c.log.lines.filter((l) => l.msg === 'asking agent for a resync')).toEqual([]);
    const over = statesOver(c.pipeline);
    expect(over.get(REUSED)).toEqual(['TIME_WAIT', 'SYN_SENT']);
    expect(over.get(CAME)).toEqual(['SYN_SENT']);
    expect([...over.keys()].some((k) => k.startsWith('removed ') && k.includes('37912'))).toBe(true);
    expect(c.log.find('agent connected; it resumes its run after the last step held')).toBeDefined();
  });

  it('after a collector restart with a data dir, resumes from the seq the store made durable', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-resume-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const recording = new Map([['/proc/net/nf_conntrack', `${TIME_WAIT}\n${STAYS}\n`]]);
    const c1 = await collectorUp(0, dir);
    const a = agentUp(c1.port, recording);
    await waitFor('the first snapshot', () => c1.log.find('snapshot applied'));
    await waitFor('a durable ack', () => (a.agent.journalState().durableSeq ?? 0) >= 3, 5_000);
    const stepsBefore = c1.pipeline.collector.timeline('node-a').length;
    await c1.down();
    c1.pipeline.store?.close();
    await changeWhileDown(recording);
    const c2 = await collectorUp(c1.port, dir);
    expect(c2.log.find('reloaded from the data store')).toMatchObject({ nodeCount: 1, incidents: 0 });
    await waitFor('the agent resuming', () => a.log.find(/^resuming/), 10_000);
    await waitFor('the collector caught up', () => states(c2.pipeline).get(REUSED) === 'SYN_SENT' && !states(c2.pipeline).has(CAME));
    expect(c2.log.lines.filter((l) => l.msg === 'snapshot applied')).toEqual([]);
    // The reloaded timeline starts before the restart and runs on through what happened while it was down.
    expect(c2.pipeline.collector.timeline('node-a').length).toBeGreaterThan(stepsBefore);
    expect(statesOver(c2.pipeline).get(REUSED)).toEqual(['TIME_WAIT', 'SYN_SENT']);
    expect(statesOver(c2.pipeline).get(CAME)).toEqual(['SYN_SENT']);
    expect(states(c2.pipeline)).toEqual(new Map([[REUSED, 'SYN_SENT'], ['10.27.2.92:40000>10.27.1.246:443', 'ESTABLISHED']]));
  });

  it('starts over with a snapshot, and names the gap, when the journal no longer reaches back to what the collector holds', async () => {
    const recording = new Map([['/proc/net/nf_conntrack', `${TIME_WAIT}\n${STAYS}\n`]]);
    const c = await collectorUp(0, null);
    // A journal of 300 ms: the cut below is longer.
    const a = agentUp(c.port, recording, { maxAgeMs: 300, maxBytes: 1 << 20 });
    await waitFor('the first snapshot', () => c.log.find('snapshot applied'));
    await waitFor('a few diffs', () => (c.pipeline.collector.nodes.get('node-a')?.lastSeq ?? 0) >= 3);
    const held = c.pipeline.collector.nodes.get('node-a')?.lastSeq ?? 0;
    await c.down();
    await changeWhileDown(recording);
    await relisten(c);
    const gap = await waitFor('the agent naming its gap', () => a.log.find(/^starting over with a snapshot: the journal does not reach back/), 10_000);
    expect(gap.lostFromSeq).toBe(held + 1);
    expect(Number(gap.lostToSeq)).toBeGreaterThan(held);
    expect(gap.lostSteps).toBe(Number(gap.lostToSeq) - held);
    expect(Number(gap.lostSeconds)).toBeGreaterThanOrEqual(0);
    expect(gap.level).toBe(40);
    await waitFor('the new snapshot', () => c.log.lines.filter((l) => l.msg === 'snapshot applied').length === 2);
    await waitFor('the state after it', () => states(c.pipeline).get(REUSED) === 'SYN_SENT');
  });
});
