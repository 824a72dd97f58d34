// Prometheus metrics of the agent (prom-client), served on its health port
// (--health-listen) next to /livez and /readyz. What the agent does as it
// goes (sample durations, bytes and frames sent, reconnects) is counted when
// it happens; what it holds (records, unreadable lines, source states,
// skipped ticks, the connection) is read from it when Prometheus scrapes.
// Labels are the source names and states of fixed sets only.
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SourceStatus } from '../contract/protocol.ts';
import { isSourceName, type SourceName } from '../contract/sources.ts';

const SOURCE_STATES = ['ok', 'unavailable', 'failed'] as const;
/** Up to the sampler's 5 s timeout, with the sub-second range where a 1 Hz tick lives. */
const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export interface AgentMetricsOptions {
  /** Each source's status as of its last sample (NodeState.statuses()). */
  readonly statuses: () => readonly SourceStatus[];
  /** Ticks skipped because the previous one was still running (Agent.skippedTicks). */
  readonly skippedTicks: () => number;
  /** Whether the agent is connected to the collector now. */
  readonly connected: () => boolean;
  /** prom-client's process and Node.js metrics (default on). */
  readonly processMetrics?: boolean;
}

/** What the agent loop tells its metrics as it goes; the Agent takes it as an option. */
export interface AgentMeter {
  /** One frame went out on the socket, as the text given to ws.send. */
  sent(frame: string): void;
  /** A connection to the collector opened. */
  opened(): void;
}

export class AgentMetrics implements AgentMeter {
  readonly registry = new Registry();
  readonly #duration: Histogram<'source'>;
  readonly #bytes: Counter;
  readonly #frames: Counter;
  readonly #reconnects: Counter;
  #opens = 0;

  constructor(o: AgentMetricsOptions) {
    const registers = [this.registry];
    if (o.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    this.#duration = new Histogram({
      name: 'conntrail_agent_sample_duration_seconds',
      help: 'How long one sample of a source took (its reads and parse), for samples that completed',
      labelNames: ['source'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    this.#bytes = new Counter({ name: 'conntrail_agent_sent_bytes_total', help: 'Bytes of frames sent to the collector (UTF-8 payload, before WebSocket framing and TLS)', registers });
    this.#frames = new Counter({ name: 'conntrail_agent_sent_frames_total', help: 'Frames sent to the collector (hello, facts, snapshot parts, diffs, capture output)', registers });
    this.#reconnects = new Counter({ name: 'conntrail_agent_reconnects_total', help: 'Connections to the collector opened after the first', registers });
    new Gauge({
      name: 'conntrail_agent_source_records',
      help: 'Records the agent holds for a source, as of its last sample',
      labelNames: ['source'],
      registers,
      collect() {
        this.reset();
        for (const s of o.statuses()) if (isSourceName(s.source)) this.set({ source: s.source }, s.records);
      },
    });
    new Gauge({
      name: 'conntrail_agent_source_problems',
      help: "Lines of a source's last sample that its parser could not read",
      labelNames: ['source'],
      registers,
      collect() {
        this.reset();
        for (const s of o.statuses()) if (isSourceName(s.source)) this.set({ source: s.source }, s.problemCount);
      },
    });
    new Gauge({
      name: 'conntrail_agent_source_state',
      help: 'The state of a source as of its last sample: 1 for the current state, 0 for the others',
      labelNames: ['source', 'state'],
      registers,
      collect() {
        this.reset();
        for (const s of o.statuses()) {
          if (!isSourceName(s.source)) continue;
          for (const state of SOURCE_STATES) this.set({ source: s.source, state }, s.state === state ? 1 : 0);
        }
      },
    });
    new Counter({
      name: 'conntrail_agent_skipped_ticks_total',
      help: 'Ticks skipped because the previous one was still sampling',
      registers,
      collect() {
        this.reset();
        this.inc(o.skippedTicks());
      },
    });
    new Gauge({
      name: 'conntrail_agent_connected',
      help: 'Whether the agent is connected to the collector (1) or not (0)',
      registers,
      collect() {
        this.set(o.connected() ? 1 : 0);
      },
    });
  }

  /** A source's sample completed in `durationMs` (NodeState.onSampled). */
  sampled(source: SourceName, durationMs: number): void {
    this.#duration.observe({ source }, durationMs / 1000);
  }

  sent(frame: string): void {
    this.#frames.inc();
    this.#bytes.inc(Buffer.byteLength(frame));
  }

  opened(): void {
    if (this.#opens++ > 0) this.#reconnects.inc();
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
