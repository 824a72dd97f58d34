// A bundle of many nodes is built node by node (collector/incidents/bundle.ts:
// each node's steps read once from the store, replayed on their own, then
// dropped). These tests hold it to paths that share none of that: the live
// collector, which saw every node's steps interleaved as they came and
// derived its findings across all of them at once, and the in-memory history
// of the same steps.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { InProcessAgent } from '../../bin/in-process.ts';
import { readTimeline, recordingOf } from '../../bin/replay.ts';
import type { FindingLine } from '../../collector/detection/aggregate.ts';
import { bundleFiles, readBundle } from '../../collector/incidents/bundle.ts';
import { createPipeline, type Pipeline } from '../../collector/pipeline.ts';
import type { Session } from '../../collector/receive/collector.ts';
import type { TimelineEntry } from '../../collector/state/node-view.ts';
import { Store } from '../../collector/store/store.ts';
import { encode, SNAPSHOT_CHUNK, type AgentMessage } from '../../contract/protocol.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { captureLog } from '../helpers/capture-log.ts';
import { saveBundle } from '../helpers/save-bundle.ts';

const timelines = new URL('../fixtures/timelines/', import.meta.url).pathname;
/** Recordings with findings of several kinds (errors, warnings, folded repeats), and one with none. */
const RECORDINGS = ['seed-002-reuse-to-removed-endpoint', 'seed-002-reuse-to-terminating-endpoint', 'seed-002-reuse-to-live-endpoint', 'calico-4851-reuse-after-scale-down', 'conntrack-pressure-drops', 'seed-003-ipvs-lb-healthcheck'];
/** Each recording is played by this many nodes, started 0, 250, 500 and 750 ms apart, then again: steps of different nodes interleave and some fall on the same millisecond. */
const COPIES = 6;
/** Times each node plays its recording. */
const ROUNDS = 3;
const T0 = Date.UTC(2026, 0, 10, 9, 0, 0);
const DAY = 24 * 3_600_000;

const stores: Store[] = [];
afterEach(() => {
  for (const s of stores.splice(0)) s.close();
});


/** Each recorded node's applied steps (what an agent sent, as the collector applied it), with its facts. */
async function recordedSteps(dir: string): Promise<{ node: string; facts: NodeFacts | null; entries: TimelineEntry[] }[]> {
  let clock = 0;
  const source = createPipeline({ log: captureLog().log, now: () => clock, historyMs: DAY });
  for (const [node, steps] of readTimeline(dir)) {
    const carried = new Map<string, string>();
    const agent = new InProcessAgent(node, new NodeState(createSamplers(), createRecordedIO(() => recordingOf(carried), () => clock), () => clock), source.collector);
    for (const step of steps) {
      clock = step.time;
      for (const [f, text] of step.files) carried.set(f, text);
      await agent.step(step.time);
    }
  }
  return [...source.collector.nodes.values()].map((v) => ({ node: v.name, facts: v.facts, entries: JSON.parse(JSON.stringify(source.collector.timeline(v.name))) as TimelineEntry[] }));
}

interface Fed {
  readonly stored: Pipeline;
  readonly heap: Pipeline;
  /** What the heap collector logged as the steps came, and at its shutdown. */
  readonly live: FindingLine[];
  readonly nodes: string[];
  readonly from: number;
  readonly to: number;
}

/** Every copy's steps, shifted to start near T0, sent in time order over the wire to a collector with a store and to one with history in the heap. */
async function feed(): Promise<Fed> {
  let clock = T0;
  const live: FindingLine[] = [];
  const opened = Store.temporary(captureLog().log, { windowMs: DAY, now: () => clock });
  stores.push(opened.store);
  const stored = createPipeline({ log: captureLog().log, version: 'test', historyMs: DAY, now: () => clock, store: opened });
  const heap = createPipeline({ log: captureLog().log, historyMs: DAY, now: () => clock, onFinding: (l) => live.push(l) });
  const steps: { node: string; facts: NodeFacts | null; entry: TimelineEntry }[] = [];
  const nodes: string[] = [];
  for (const [i, rec] of RECORDINGS.entries())
    for (const r of await recordedSteps(join(timelines, rec)))
      for (let k = 0; k < COPIES; k++) {
        // Several recordings name the same node: each copy gets a name of its own.
        const node = `${r.node}-${i}-${k}`;
        nodes.push(node);
        const first = r.entries[0]?.time ?? 0;
        const span = (r.entries.at(-1)?.time ?? first) - first;
        // Played ROUNDS times, each from its snapshot again (as after a resync), 20 s apart: the same finding repeats within the folding window.
        for (let round = 0; round < ROUNDS; round++)
          for (const [j, e] of r.entries.entries()) steps.push({ node, facts: r.facts, entry: { ...e, seq: round * r.entries.length + j + 1, time: T0 + round * (span + 20_000) + (e.time - first) + (k % 4) * 250 } });
      }
  steps.sort((a, b) => a.entry.time - b.entry.time);
  const sessions = new Map<string, Session[]>();
  const send = (node: string, msg: AgentMessage) => {
    let s = sessions.get(node);
    if (s === undefined) sessions.set(node, (s = [stored, heap].map(() => ({ node: null, remote: 'test', send: () => undefined }))));
    stored.collector.receive(s[0] as Session, encode(msg));
    heap.collector.receive(s[1] as Session, encode(msg));
  };
  for (const { node, facts, entry } of steps) {
    clock = entry.time;
    if (!sessions.has(node)) {
      send(node, { v: 1, type: 'hello', node, agentVersion: 'test', intervalMs: 1000, startedAt: entry.time });
      if (facts !== null) send(node, { v: 1, type: 'facts', facts });
    }
    if (entry.kind === 'snapshot') {
      for (const c of entry.changes) {
        const parts = Math.max(1, Math.ceil(c.added.length / SNAPSHOT_CHUNK));
        for (let part = 0; part < parts; part++) send(node, { v: 1, type: 'snapshot', seq: entry.seq, time: entry.time, source: c.source, part, parts, records: c.added.slice(part * SNAPSHOT_CHUNK, (part + 1) * SNAPSHOT_CHUNK) });
      }
      send(node, { v: 1, type: 'snapshot-end', seq: entry.seq, time: entry.time, status: [] });
    } else send(node, { v: 1, type: 'diff', seq: entry.seq, time: entry.time, changes: entry.changes, status: [] });
    // The 250 ms commit timer, as the collector process runs it.
    opened.store.flush();
  }
  const to = clock;
  // The shutdown flush: what the live collector was still folding.
  heap.flush(to + 3_600_000);
  return { stored, heap, live, nodes, from: T0 - 1000, to };
}

/** Finding lines in one order whatever order they came in: by time, node, then the whole line. */
const canonical = (lines: readonly FindingLine[]): string[] =>
  lines
    .map((l) => ({ l, text: JSON.stringify(l) }))
    .sort((a, b) => a.l.time - b.l.time || a.l.node.localeCompare(b.l.node) || (a.text < b.text ? -1 : a.text > b.text ? 1 : 0))
    .map((x) => x.text);

describe('a bundle of many nodes, built node by node', () => {
  it('holds the findings the live collector derived across all nodes at once, in time order, and the endpoints it tracked', async () => {
    const fed = await feed();
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-bundle-nodes-test-'));
    try {
      const file = join(dir, 'b.tar.gz');
      await saveBundle(await fed.stored.bundles.recentBundle(fed.to - fed.from, fed.to), file);
      const { manifest, files } = await readBundle(file);
      expect(manifest.nodes).toHaveLength(fed.nodes.length);
      expect(fed.nodes.length).toBeGreaterThanOrEqual(36);

      const findings = (files.get('findings.jsonl') ?? '').split('\n').filter(Boolean).map((l) => JSON.parse(l) as FindingLine);
      // The recordings find errors and warnings on many nodes, some folded from repeats.
      expect(new Set(findings.map((f) => f.node)).size).toBeGreaterThanOrEqual(4 * COPIES);
      expect(new Set(findings.map((f) => f.severity))).toEqual(new Set(['error', 'warning']));
      expect(findings.filter((f) => f.count > 1).length).toBeGreaterThanOrEqual(COPIES);
      expect(canonical(findings)).toEqual(canonical(JSON.parse(JSON.stringify(fed.live)) as FindingLine[]));
      expect(findings.map((f) => f.time)).toEqual(findings.map((f) => f.time).sort((a, b) => a - b));

      const endpoints = (files.get('endpoints.jsonl') ?? '').split('\n').filter(Boolean).map((l) => JSON.parse(l) as { endpoint: string; service: string });
      const tracked = fed.nodes.flatMap((n) => fed.heap.detection.history(n).all());
      expect(endpoints.length).toBe(tracked.length);
      expect(endpoints.map((e) => `${e.service} ${e.endpoint}`).sort()).toEqual(tracked.map((e) => `${e.service} ${e.endpoint}`).sort());

      // Every finding is told in the summary, in time order.
      const summary = files.get('summary.md') ?? '';
      const told = [...summary.matchAll(/^### (\S+) — /gm)].map((m) => m[1]);
      expect(told).toEqual(findings.map((f) => new Date(f.time).toISOString()));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('holds the same files, streamed from the store, as a bundle made from the in-memory history of the same steps', async () => {
    const fed = await feed();
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-bundle-nodes-test-'));
    try {
      const file = join(dir, 'b.tar.gz');
      await saveBundle(await fed.stored.bundles.recentBundle(fed.to - fed.from, fed.to), file);
      const { files } = await readBundle(file);
      const held = fed.heap.bundles.timelines(fed.from, fed.to, null);
      expect(held).toHaveLength(fed.nodes.length);
      // Each timeline file is the node's held slice, a line per step.
      for (const t of held) expect(files.get(`timeline/${t.node}.jsonl`), t.node).toBe(t.entries.map((e) => `${JSON.stringify(e)}\n`).join(''));
      const fromMemory = bundleFiles({ from: fed.from, to: fed.to, timelines: held, incident: null, version: 'test', kubernetes: null });
      const text = new Map([...fromMemory].map(([p, c]) => [p, typeof c === 'string' ? c : c.toString('utf8')]));
      expect(new Map([...files].sort(([a], [b]) => a.localeCompare(b)))).toEqual(new Map([...text].sort(([a], [b]) => a.localeCompare(b))));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
