// One node's samples written by hand as the tools print them, parsed by the
// agent's real parsers, diffed with the contract's specs, sent over the wire
// encoding to a real collector and its detection stage: the transitions a
// detector sees are the ones a live node would produce for these outputs.
import { pino } from 'pino';
import { parsers } from '../../agent/parsers.ts';
import type { FindingLine } from '../../collector/detection/aggregate.ts';
import { Collector, type Session } from '../../collector/receive/collector.ts';
import { Detection } from '../../collector/detection/detection.ts';
import type { KubeView } from '../../collector/kube/catalog.ts';
import { diffByKey, indexByKey } from '../../contract/diff.ts';
import { encode, type AgentMessage, type SourceChange } from '../../contract/protocol.ts';
import { specOf, type RecordOf, type SourceName } from '../../contract/sources.ts';

export type Outputs = Partial<Record<SourceName, string>>;

export class NodeSteps {
  readonly findings: FindingLine[] = [];
  readonly collector: Collector;
  readonly detection: Detection;
  readonly #node: string;
  readonly #session: Session;
  readonly #state = new Map<SourceName, Map<string, RecordOf<SourceName>>>();
  #seq = 0;
  #clock = 0;

  constructor(node = 'node-1', options: { kube?: KubeView | null; windowMs?: number } = {}) {
    this.#node = node;
    this.collector = new Collector({ log: pino({ level: 'silent' }), now: () => this.#clock });
    // With the collector's bounds, as the pipeline builds it: the detection stage's own bounds are listed there.
    this.detection = new Detection((l) => this.findings.push(l), { ...options, bounds: this.collector.bounds });
    this.detection.watch(this.collector);
    this.#session = { node: null, remote: 'test', send: () => undefined };
  }

  /** One sample at `time`: each source's output as printed; a source not given keeps its last output. */
  step(time: number, outputs: Outputs): this {
    this.#clock = time;
    const send = (msg: AgentMessage) => this.collector.receive(this.#session, encode(msg));
    const first = this.#seq === 0;
    this.#seq++;
    const changes: SourceChange[] = [];
    for (const [source, text] of Object.entries(outputs) as [SourceName, string][]) {
      const parsed = parsers[source](text);
      if (parsed.problems.length > 0) throw new Error(`${source}: ${JSON.stringify(parsed.problems)}`);
      const spec = specOf(source);
      const next = indexByKey<RecordOf<SourceName>>(parsed.records, spec).map;
      const prev = this.#state.get(source) ?? new Map<string, RecordOf<SourceName>>();
      this.#state.set(source, next);
      changes.push({ source, ...diffByKey<RecordOf<SourceName>>(prev, next, spec) });
    }
    if (first) {
      send({ v: 1, type: 'hello', node: this.#node, agentVersion: 'test', intervalMs: 1000, startedAt: time });
      for (const [source, map] of this.#state) send({ v: 1, type: 'snapshot', seq: this.#seq, time, source, part: 0, parts: 1, records: [...map.values()] });
      send({ v: 1, type: 'snapshot-end', seq: this.#seq, time, status: [] });
    } else {
      send({ v: 1, type: 'diff', seq: this.#seq, time, changes, status: [] });
    }
    return this;
  }

  /** Findings of a kind, folded lines included. */
  of(kind: FindingLine['finding']): FindingLine[] {
    return this.findings.filter((f) => f.finding === kind);
  }
}
