// The agent's picture of its node: the last good sample of every source,
// keyed, plus each source's status. One tick samples every source in
// parallel, diffs each against its previous picture and returns the changes.
// A failed source yields no diff (its previous picture stands) and does not
// stop the others; a source the node lacks is reported once and skipped.
import { diffByKey, indexByKey, isEmptyDiff } from '../contract/diff.ts';
import { isConntrailError } from '../contract/errors.ts';
import { MAX_PROBLEM_SAMPLES, type SourceChange, type SourceStatus } from '../contract/protocol.ts';
import { specOf, type RecordOf, type SourceName, type SourceSpec } from '../contract/sources.ts';
import type { HostIO } from './host-io.ts';
import type { Reading, Sample, Sampler } from './samplers.ts';

/** What the agent holds of one source: records (or its compact form) by key. */
interface Kept {
  readonly map: ReadonlyMap<string, unknown>;
  readonly spec: SourceSpec<unknown>;
  readonly expand: ((kept: unknown) => RecordOf<SourceName> | null) | null;
}

export interface TickResult {
  readonly time: number;
  readonly changes: readonly SourceChange[];
  /** Statuses that differ from the previous tick's. */
  readonly statusChanges: readonly SourceStatus[];
}

/** A source marked unavailable is probed again this often, quietly. */
const REPROBE_MS = 60_000;

export class NodeState {
  readonly #samplers: readonly Sampler[];
  readonly #io: HostIO;
  readonly #kept = new Map<SourceName, Kept>();
  readonly #status = new Map<SourceName, SourceStatus>();
  readonly #readings = new Map<SourceName, readonly Reading[]>();
  readonly #unavailableSince = new Map<SourceName, number>();
  readonly #now: () => number;
  #wantChanges = true;
  #resyncWanted = false;
  readonly #sampled: ((source: SourceName, durationMs: number) => void)[] = [];

  /** Hears each source's sample duration as its sample completes (the agent's metrics). */
  onSampled(listener: (source: SourceName, durationMs: number) => void): void {
    this.#sampled.push(listener);
  }

  /** True once after a source lost track of what it reported: the caller sends a snapshot instead of diffs. */
  takeResync(): boolean {
    const wanted = this.#resyncWanted;
    this.#resyncWanted = false;
    return wanted;
  }

  constructor(samplers: readonly Sampler[], io: HostIO, now: () => number = Date.now) {
    this.#samplers = samplers;
    this.#io = io;
    this.#now = now;
  }

  /**
   * `wantChanges`: whether the caller will send this tick's changes. An agent
   * about to send a snapshot does not need them, and at 100k entries the
   * first tick's changes are 100k full records.
   */
  async tick(wantChanges = true): Promise<TickResult> {
    this.#wantChanges = wantChanges;
    const time = this.#now();
    const due = this.#samplers.filter((s) => {
      const since = this.#unavailableSince.get(s.source);
      return since === undefined || time - since >= REPROBE_MS;
    });
    const settled = await Promise.allSettled(due.map((s) => this.#timed(s)));
    const changes: SourceChange[] = [];
    const statusChanges: SourceStatus[] = [];
    for (let i = 0; i < due.length; i++) {
      const sampler = due[i];
      const outcome = settled[i];
      if (sampler === undefined || outcome === undefined) continue;
      const source = sampler.source;
      let status: SourceStatus;
      if (outcome.status === 'fulfilled') {
        const { sample, durationMs } = outcome.value;
        for (const l of this.#sampled) l(source, durationMs);
        this.#unavailableSince.delete(source);
        const change = this.#apply(source, sample);
        if (change !== null) changes.push(change);
        this.#readings.set(source, sample.readings);
        status = {
          source,
          state: 'ok',
          via: sample.readings.map((r) => r.via).join(' + '),
          reason: null,
          records: this.#kept.get(source)?.map.size ?? 0,
          problemCount: sample.problems.length,
          problems: sample.problems.slice(0, MAX_PROBLEM_SAMPLES),
          durationMs,
        };
      } else {
        const err: unknown = outcome.reason;
        const unavailable = isConntrailError(err, 'TOOL_MISSING') || isConntrailError(err, 'SOURCE_UNAVAILABLE');
        if (unavailable) {
          this.#unavailableSince.set(source, time);
          // What we knew of a source that has vanished is no longer true.
          const gone = this.#apply(source, { source, readings: [], records: [], problems: [] });
          if (gone !== null) changes.push(gone);
        }
        const prev = this.#status.get(source);
        status = {
          source,
          state: unavailable ? 'unavailable' : 'failed',
          via: prev?.via ?? null,
          reason: err instanceof Error ? err.message : String(err),
          records: this.#kept.get(source)?.map.size ?? 0,
          problemCount: 0,
          problems: [],
          durationMs: 0,
        };
      }
      if (!sameStatus(this.#status.get(source), status)) statusChanges.push(status);
      this.#status.set(source, status);
    }
    return { time, changes, statusChanges };
  }

  /** Current records of every sampled source, in chunks of at most `size`, made as they are asked for. */
  *snapshot(size: number): Generator<{ source: SourceName; part: number; parts: number; records: RecordOf<SourceName>[] }> {
    for (const [source, kept] of this.#kept) {
      const parts = Math.max(1, Math.ceil(kept.map.size / size));
      let part = 0;
      let chunk: RecordOf<SourceName>[] = [];
      for (const r of kept.map.values()) {
        const full = kept.expand === null ? (r as RecordOf<SourceName>) : kept.expand(r);
        if (full !== null) chunk.push(full);
        if (chunk.length === size) {
          yield { source, part: part++, parts, records: chunk };
          chunk = [];
        }
      }
      if (part < parts) yield { source, part: part++, parts, records: chunk };
      while (part < parts) yield { source, part: part++, parts, records: [] };
    }
  }

  statuses(): SourceStatus[] {
    return [...this.#status.values()];
  }

  /** The verbatim outputs of each source's last good sample. */
  readings(): ReadonlyMap<SourceName, readonly Reading[]> {
    return this.#readings;
  }

  async #timed(s: Sampler): Promise<{ sample: Sample<SourceName>; durationMs: number }> {
    const t0 = performance.now();
    const sample = await s.sample(this.#io);
    return { sample, durationMs: Math.round((performance.now() - t0) * 10) / 10 };
  }

  #apply(source: SourceName, sample: Sample<SourceName>): SourceChange | null {
    const compact = sample.compact;
    const spec = compact?.spec ?? specOf(source);
    const next = compact?.keyed ?? indexByKey<unknown>(sample.records, spec).map;
    const kept = this.#kept.get(source);
    const prev = kept !== undefined && kept.spec === spec ? kept.map : new Map<string, unknown>();
    const expand = compact === undefined ? null : (r: unknown) => compact.expand(r);
    this.#kept.set(source, { map: next, spec, expand });
    if (compact?.restarted) {
      this.#resyncWanted = true;
      return null;
    }
    if (!this.#wantChanges) return null;
    const diff = compact?.diff?.() ?? diffByKey(prev, next, spec);
    if (isEmptyDiff(diff)) return null;
    const full = (rs: readonly unknown[]): RecordOf<SourceName>[] =>
      expand === null ? (rs as RecordOf<SourceName>[]) : rs.map(expand).filter((r): r is RecordOf<SourceName> => r !== null);
    return { source, added: full(diff.added), removed: diff.removed, changed: full(diff.changed), refreshed: full(diff.refreshed) };
  }
}

function sameStatus(a: SourceStatus | undefined, b: SourceStatus): boolean {
  if (a === undefined) return false;
  // Duration and record counts move every tick; they are reported on request, not streamed.
  return a.state === b.state && a.reason === b.reason && a.via === b.via && a.problemCount === b.problemCount;
}
