// An agent's NodeState feeding a collector in the same process with the
// messages a socket would carry, decoded (the JSON codec is the wire's, and
// only the wire's): what `replay` and `doctor` run.
import type { NodeState } from '../agent/node-state.ts';
import type { Collector, Session } from '../collector/receive/collector.ts';
import { SNAPSHOT_CHUNK, type AgentMessage } from '../contract/protocol.ts';
import type { NodeFacts } from '../contract/records.ts';

export class InProcessAgent {
  readonly #node: string;
  readonly #state: NodeState;
  readonly #collector: Collector;
  readonly #session: Session;
  #seq = 0;

  constructor(node: string, state: NodeState, collector: Collector) {
    this.#node = node;
    this.#state = state;
    this.#collector = collector;
    this.#session = { node: null, remote: `in-process:${node}`, send: () => undefined };
  }

  /** Samples once; the first step says hello and sends a snapshot, later ones a diff. */
  async step(time: number, facts?: NodeFacts): Promise<void> {
    const send = (msg: AgentMessage) => this.#collector.accept(this.#session, msg);
    const first = this.#seq === 0;
    if (first) send({ v: 1, type: 'hello', node: this.#node, agentVersion: 'in-process', intervalMs: 1000, startedAt: time });
    if (facts !== undefined) send({ v: 1, type: 'facts', facts });
    const result = await this.#state.tick();
    this.#seq++;
    if (first) {
      for (const chunk of this.#state.snapshot(SNAPSHOT_CHUNK)) send({ v: 1, type: 'snapshot', seq: this.#seq, time, ...chunk });
      send({ v: 1, type: 'snapshot-end', seq: this.#seq, time, status: this.#state.statuses() });
    } else {
      send({ v: 1, type: 'diff', seq: this.#seq, time, changes: result.changes, status: result.statusChanges });
    }
  }
}
