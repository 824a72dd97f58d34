// The collector's durable store (`--data-dir`): each node's timeline as the
// frames its steps were applied from, the node's last statuses and facts,
// incidents and finding lines, in one SQLite file through Node's built-in
// `node:sqlite`. Writes are queued by the same synchronous path that applies
// frames and committed in one transaction every FLUSH_MS; only then is the
// agent told the seq is durable, so whatever a crash loses its journal still
// holds.
//
// Durability: WAL with synchronous=NORMAL. A committed transaction survives
// the collector being killed (kill -9, OOM): it is in the WAL file. A power
// loss or kernel crash may lose the transactions since the last WAL
// checkpoint's fsync (SQLite checkpoints every 1,000 pages by default; with
// one transaction every 250 ms that is seconds at most), never corrupt the
// file. The agents' journals cover such a loss when their run is still alive.
//
// The store is also where history lives: a running collector keeps only the
// last seconds of each node's steps in the heap (state/history.ts) and reads
// older ones back from here (`slice`) for bundles. Without `--data-dir` the
// same store runs on a temporary file (`Store.temporary`), removed at exit.
//
// Retention: a node's stored timeline starts from a base, either a snapshot
// step the agent sent or a checkpoint (the node's live state after one
// stored step, written at most every CHECKPOINT_MS of the node's sample
// time, at most CHECKPOINTS_PER_FLUSH per commit). Every RETAIN_MS the steps
// before the newest base older than the window are deleted, with the bases
// before it: plain deletes, nothing folded or rewritten. So the store holds
// the window plus at most one checkpoint interval, and a reload or a slice
// starts from a base and applies the steps after it.
import { mkdirSync, renameSync, existsSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import type { Logger } from 'pino';
import { decodeAgentMessage, isNodeName, sourceStatus, type SourceStatus } from '../../contract/protocol.ts';
import { nodeFacts, type NodeFacts } from '../../contract/records.ts';
import { array, nullable } from '../../contract/schema.ts';
import type { FindingLine } from '../detection/aggregate.ts';
import type { Incident } from '../incidents/incidents.ts';
import type { RestoredNode } from '../receive/collector.ts';
import { fold, snapshotOf, stateOf, type HistoryStore } from '../state/history.ts';
import type { TimelineEntry } from '../state/node-view.ts';
import { claimTemporaryDir, sweepLeftovers, touchTemporaryDir } from './temporary-dirs.ts';

export const STORE_FILE = 'conntrail.db';
/** How often queued writes are committed (and acks sent): at most this many acks a second per node is 1000 / FLUSH_MS. */
export const FLUSH_MS = 250;
/** How often steps that left the window are deleted. */
export const RETAIN_MS = 60_000;
/** Checkpoints per node are this far apart in sample time (less for a short window: a third of it). */
export const CHECKPOINT_MS = 5 * 60_000;
/** A checkpoint encodes a node's whole state (5,000 records: a few ms): a commit writes at most this many. */
const CHECKPOINTS_PER_FLUSH = 2;
/** Steps read from the database at a time when a slice or a reload streams a node's timeline. */
const PAGE = 16;
const SCHEMA_VERSION = 1;
/**
 * Writes held for the next commit after commits fail (a full disk, an I/O
 * error): a minute of 200 nodes' steps and then some. Past it the queued
 * steps are given up, and each of their nodes' stored timelines restarts
 * from its live state at the next commit that succeeds (see #restart).
 */
export const MAX_QUEUED_WRITES = 50_000;

/** What the store keeps of a node besides its steps, as of the last queued step. */
export interface NodeMeta {
  readonly run: string | null;
  readonly lastSeq: number | null;
  readonly lastTime: number | null;
  readonly connectedAt: number | null;
  readonly lastReceivedAt: number | null;
  readonly agentVersion: string | null;
  readonly intervalMs: number | null;
  readonly facts: NodeFacts | null;
  readonly statuses: readonly SourceStatus[];
}

export interface StoreOptions {
  readonly windowMs: number;
  readonly now?: () => number;
  /** Writes held across failing commits (MAX_QUEUED_WRITES); tests shorten it. */
  readonly maxQueued?: number;
}

/** How the store's writing goes, for the API. */
export interface StoreStatus {
  readonly path: string;
  readonly temporary: boolean;
  /** Commits that failed since start; their writes were kept for the next. */
  readonly failedCommits: number;
  /** Writes waiting for the next commit. */
  readonly queued: number;
  /** Steps given up after commits kept failing: bundles lack them. */
  readonly droppedSteps: number;
  /** Why the last commit that failed did, while commits are failing; null once one succeeds. */
  readonly error: string | null;
}

/** What a start reloads. */
export interface Loaded {
  readonly nodes: RestoredNode[];
  /** Oldest first, each with its finding lines. */
  readonly incidents: Incident[];
  /** The highest incident ordinal stored: new ids count on from it. */
  readonly opened: number;
  /** Finding lines kept within the window (those of incidents included). */
  readonly findings: number;
  /** Rows that could not be read back, by what they were. */
  readonly unreadable: Readonly<Record<string, number>>;
}

type Pending =
  | { readonly kind: 'step'; readonly node: string; readonly entry: TimelineEntry }
  | { readonly kind: 'finding'; readonly line: FindingLine; readonly incident: string | null }
  | { readonly kind: 'incident'; readonly incident: Incident };

export type DurableListener = (node: string, run: string, seq: number, time: number) => void;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS steps (id INTEGER PRIMARY KEY AUTOINCREMENT, node TEXT NOT NULL, seq INTEGER NOT NULL, time INTEGER NOT NULL, kind TEXT NOT NULL, frame TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS steps_by_node ON steps (node, id);
CREATE TABLE IF NOT EXISTS bases (node TEXT PRIMARY KEY, seq INTEGER NOT NULL, time INTEGER NOT NULL, frame TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (node TEXT NOT NULL, after_id INTEGER NOT NULL, seq INTEGER NOT NULL, time INTEGER NOT NULL, frame TEXT NOT NULL, PRIMARY KEY (node, after_id));
CREATE TABLE IF NOT EXISTS nodes (node TEXT PRIMARY KEY, run TEXT, last_seq INTEGER, last_time INTEGER, connected_at INTEGER, last_received_at INTEGER, agent_version TEXT, interval_ms INTEGER, facts TEXT, statuses TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS incidents (id TEXT PRIMARY KEY, ordinal INTEGER NOT NULL, service TEXT, nodes TEXT NOT NULL, first_finding INTEGER NOT NULL, last_finding INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS findings (id INTEGER PRIMARY KEY AUTOINCREMENT, incident TEXT, time INTEGER NOT NULL, line TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS findings_by_incident ON findings (incident, id);
CREATE INDEX IF NOT EXISTS findings_by_time ON findings (time, id);
`;

/**
 * A step as it goes into the store: the wire frame it was applied from (a
 * snapshot's records as one frame of `added`), deflated. Conntrack frames
 * shrink about eightfold at level 1 for well under a millisecond each: at 200
 * nodes and 1% churn of 5,000 entries the steps are ~4 MB a second of JSON,
 * 3.6 GB for a 15-minute window against the 4 GiB volume, and deleting a
 * minute of them at once stalled the event loop.
 */
function frameOf(entry: TimelineEntry): Uint8Array {
  return deflateRawSync(JSON.stringify({ v: 1, type: 'diff', seq: entry.seq, time: entry.time, changes: entry.changes, status: [] }), { level: 1 });
}

/** No frame inflates past this: a damaged or planted row is refused, not inflated without end. */
const MAX_FRAME_BYTES = 512 * 2 ** 20;

/** A stored frame's JSON: a deflated BLOB, or TEXT as stores before compression wrote it. Null when neither reads. */
function frameText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (!(v instanceof Uint8Array)) return null;
  try {
    return inflateRawSync(v, { maxOutputLength: MAX_FRAME_BYTES }).toString('utf8');
  } catch {
    return null;
  }
}

/** A stored frame read back through the protocol's own decoder: a damaged row is refused, never trusted. */
function entryOf(stored: unknown, kind: string): TimelineEntry | null {
  if (kind !== 'snapshot' && kind !== 'diff') return null;
  const frame = frameText(stored);
  if (frame === null) return null;
  const d = decodeAgentMessage(frame);
  if (!d.ok || d.msg.type !== 'diff') return null;
  if (kind === 'snapshot' && d.msg.changes.some((c) => c.removed.length + c.changed.length + c.refreshed.length > 0)) return null;
  // A snapshot step reads back as the collector's view wrote it (its fields in that order), so a bundle's timeline from the store is the one from the heap, byte for byte.
  const changes = kind === 'snapshot' ? d.msg.changes.map((c) => ({ source: c.source, added: c.added, removed: [], changed: [], refreshed: [] })) : d.msg.changes;
  return { seq: d.msg.seq, time: d.msg.time, kind, changes };
}

const statusesSchema = array(sourceStatus, 64);
const factsSchema = nullable(nodeFacts);

function parseJson(text: unknown): { ok: true; value: unknown } | { ok: false } {
  if (typeof text !== 'string') return { ok: false };
  try {
    return { ok: true, value: JSON.parse(text) as unknown };
  } catch {
    return { ok: false };
  }
}

const intOrNull = (v: unknown): number | null => (typeof v === 'number' && Number.isSafeInteger(v) ? v : typeof v === 'bigint' ? Number(v) : null);
const strOrNull = (v: unknown): string | null => (typeof v === 'string' ? v : null);

function isFindingLine(v: unknown): v is FindingLine {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return typeof o.finding === 'string' && typeof o.severity === 'string' && typeof o.node === 'string' && typeof o.time === 'number' && Number.isFinite(o.time) && (o.service === null || typeof o.service === 'string');
}

const ordinalOf = (id: string): number => Number(/-(\d+)$/.exec(id)?.[1] ?? 0);

/** Where a stored timeline can start: a decoded snapshot and the step id it stands after. */
interface Start {
  readonly afterId: number;
  readonly entry: TimelineEntry;
}

/** Temporary stores still on disk: removed when the process exits, if their close did not. */
const temporaryDirs = new Set<string>();
let exitHookSet = false;
function removeTemporaryDirs(): void {
  for (const dir of temporaryDirs) rmSync(dir, { recursive: true, force: true });
  temporaryDirs.clear();
}

/** The state a node is in: what checkpoints are taken from (the live view, after its last applied step). */
export type StateSource = (node: string) => TimelineEntry | null;

export class Store implements HistoryStore {
  readonly path: string;
  readonly #db: DatabaseSync;
  readonly #log: Logger;
  readonly #windowMs: number;
  #pending: Pending[] = [];
  #meta: ((node: string) => NodeMeta | null) | null = null;
  readonly #durable: DurableListener[] = [];
  #timers: NodeJS.Timeout[] = [];
  #failedWrites = 0;
  #maxQueued = MAX_QUEUED_WRITES;
  #error: string | null = null;
  /** Steps given up after commits kept failing, and the nodes whose stored timeline must restart from their live state. */
  #droppedSteps = 0;
  readonly #gapped = new Set<string>();
  #closed = false;
  #tempDir: string | null = null;
  #stateOf: StateSource | null = null;
  /** Sample time of each node's newest base (a snapshot step or a checkpoint). */
  readonly #lastBase = new Map<string, number>();
  readonly #checkpointMs: number;
  readonly #stmt: {
    step: StatementSync;
    node: StatementSync;
    incident: StatementSync;
    finding: StatementSync;
  };

  private constructor(path: string, db: DatabaseSync, log: Logger, windowMs: number) {
    this.path = path;
    this.#db = db;
    this.#log = log;
    this.#windowMs = windowMs;
    this.#checkpointMs = Math.max(1_000, Math.min(CHECKPOINT_MS, Math.floor(windowMs / 3)));
    this.#stmt = {
      step: db.prepare('INSERT INTO steps (node, seq, time, kind, frame) VALUES (?, ?, ?, ?, ?)'),
      node: db.prepare(
        'INSERT INTO nodes (node, run, last_seq, last_time, connected_at, last_received_at, agent_version, interval_ms, facts, statuses) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ' +
          'ON CONFLICT (node) DO UPDATE SET run = excluded.run, last_seq = excluded.last_seq, last_time = excluded.last_time, connected_at = excluded.connected_at, last_received_at = excluded.last_received_at, agent_version = excluded.agent_version, interval_ms = excluded.interval_ms, facts = excluded.facts, statuses = excluded.statuses',
      ),
      incident: db.prepare(
        'INSERT INTO incidents (id, ordinal, service, nodes, first_finding, last_finding) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET nodes = excluded.nodes, last_finding = excluded.last_finding',
      ),
      finding: db.prepare('INSERT INTO findings (incident, time, line) VALUES (?, ?, ?)'),
    };
  }

  /**
   * Opens (or creates) the store in `dir` and reads back what it holds. A
   * file SQLite cannot read (torn, overwritten, another format) is moved
   * aside as `conntrail.db.unreadable-<time>` and the collector starts with
   * an empty store, saying so; it never refuses to start over its own data.
   * Throws only when the directory itself cannot hold a database.
   */
  static open(dir: string, log: Logger, options: StoreOptions): { store: Store; loaded: Loaded } {
    mkdirSync(dir, { recursive: true });
    const path = join(dir, STORE_FILE);
    const now = options.now ?? Date.now;
    try {
      const store = Store.#openAt(path, log, options.windowMs);
      store.#maxQueued = options.maxQueued ?? MAX_QUEUED_WRITES;
      try {
        return { store, loaded: store.#load(now()) };
      } catch (err) {
        store.#db.close();
        throw err;
      }
    } catch (err) {
      const aside = `${path}.unreadable-${new Date(now()).toISOString().replace(/[-:.]/g, '')}`;
      for (const suffix of ['', '-wal', '-shm']) if (existsSync(path + suffix)) renameSync(path + suffix, aside + suffix);
      log.error({ path, movedTo: aside, err: (err as Error).message }, 'the data store could not be read: moved it aside and starting with an empty store (incidents and timelines from before this start are not reloaded)');
      const store = Store.#openAt(path, log, options.windowMs);
      store.#maxQueued = options.maxQueued ?? MAX_QUEUED_WRITES;
      return { store, loaded: { nodes: [], incidents: [], opened: 0, findings: 0, unreadable: {} } };
    }
  }

  /**
   * The same store on a private temporary file, for a collector run without
   * `--data-dir`: history still lives on disk rather than in the heap, and
   * the file goes when the store is closed or the process exits.
   */
  static temporary(log: Logger, options: StoreOptions): { store: Store; loaded: Loaded } {
    for (const gone of sweepLeftovers(tmpdir())) log.info({ path: gone.dir, why: gone.why }, 'removed a temporary store left by a collector that is gone');
    const dir = claimTemporaryDir(tmpdir());
    temporaryDirs.add(dir);
    if (!exitHookSet) {
      process.once('exit', removeTemporaryDirs);
      exitHookSet = true;
    }
    const opened = Store.open(dir, log, options);
    opened.store.#tempDir = dir;
    log.info({ path: opened.store.path }, `history kept in a temporary store at ${opened.store.path}; pass --data-dir to keep it across restarts`);
    return opened;
  }

  /** True for a store on a temporary file (no --data-dir): nothing in it outlives the process. */
  get temporary(): boolean {
    return this.#tempDir !== null;
  }

  static #openAt(path: string, log: Logger, windowMs: number): Store {
    const db = new DatabaseSync(path);
    try {
      // A damaged file often opens fine: reading it is what fails.
      const check = db.prepare('PRAGMA quick_check').all();
      const verdict = check.map((r) => Object.values(r)[0]).join('; ');
      if (verdict !== 'ok') throw new Error(`integrity check: ${verdict.slice(0, 300)}`);
      const version = intOrNull(db.prepare('PRAGMA user_version').get()?.user_version) ?? 0;
      if (version !== 0 && version !== SCHEMA_VERSION) throw new Error(`store schema version ${version}, this collector reads ${SCHEMA_VERSION}`);
      db.exec('PRAGMA journal_mode = WAL');
      db.exec('PRAGMA synchronous = NORMAL');
      db.exec(SCHEMA);
      // A store written before checkpoints kept one folded base per node, with every step after it: a checkpoint before all steps.
      db.exec('INSERT OR IGNORE INTO checkpoints (node, after_id, seq, time, frame) SELECT node, 0, seq, time, frame FROM bases; DELETE FROM bases;');
      db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      return new Store(path, db, log, windowMs);
    } catch (err) {
      db.close();
      throw err;
    }
  }

  /** Where each node's meta comes from at commit time (the collector's views). */
  nodeMeta(source: (node: string) => NodeMeta | null): void {
    this.#meta = source;
  }

  /** Where checkpoints are taken from: each node's state after its last applied step. */
  stateSource(source: StateSource): void {
    this.#stateOf = source;
  }

  /** Called after each commit, per node, with the newest seq written. */
  onDurable(listener: DurableListener): void {
    this.#durable.push(listener);
  }

  /** Queues an applied step; committed with the next flush. */
  step(node: string, entry: TimelineEntry): void {
    if (!this.#closed) this.#pending.push({ kind: 'step', node, entry });
  }

  finding(line: FindingLine, incident: string | null): void {
    if (!this.#closed) this.#pending.push({ kind: 'finding', line, incident });
  }

  incident(incident: Incident): void {
    if (!this.#closed) this.#pending.push({ kind: 'incident', incident });
  }

  /** Commits every queued write in one transaction, then tells each node's listeners the seq now durable. */
  flush(): void {
    if (this.#pending.length === 0 || this.#closed) return;
    const batch = this.#pending;
    this.#pending = [];
    const last = new Map<string, TimelineEntry>();
    const lastId = new Map<string, number>();
    const bases = new Map<string, number>();
    // A node whose queued steps were given up restarts from its last step in this batch (see #restart): its others are not written.
    const restartAt = new Map<string, Pending & { kind: 'step' }>();
    /** The live state each restarting node's checkpoint is written from (none for a snapshot step, its own base). */
    const restartState = new Map<string, TimelineEntry>();
    if (this.#gapped.size > 0) for (const p of batch) if (p.kind === 'step' && this.#gapped.has(p.node)) restartAt.set(p.node, p);
    for (const [node, p] of restartAt) {
      if (p.entry.kind === 'snapshot') continue;
      const state = this.#stateAfter(node, p.entry);
      if (state !== null) {
        restartState.set(node, state);
        continue;
      }
      // Without the state after that step (the node's view moved on or went), nothing of the node can be stored yet: it stays gapped.
      restartAt.delete(node);
      for (const q of batch) if (q.kind === 'step' && q.node === node) this.#droppedSteps++;
    }
    try {
      this.#db.exec('BEGIN');
      for (const p of batch) {
        if (p.kind === 'step') {
          if (this.#gapped.has(p.node) && restartAt.get(p.node) !== p) continue;
          if (restartAt.get(p.node) === p) this.#restart(p.node);
          const r = this.#stmt.step.run(p.node, p.entry.seq, p.entry.time, p.entry.kind, frameOf(p.entry));
          last.set(p.node, p.entry);
          lastId.set(p.node, Number(r.lastInsertRowid));
          if (p.entry.kind === 'snapshot') bases.set(p.node, p.entry.time);
        } else if (p.kind === 'finding') this.#stmt.finding.run(p.incident, p.line.time, JSON.stringify(p.line));
        else {
          const i = p.incident;
          this.#stmt.incident.run(i.id, ordinalOf(i.id), i.service, JSON.stringify([...i.nodes]), i.firstFinding, i.lastFinding);
        }
      }
      const metas = new Map<string, NodeMeta>();
      for (const node of last.keys()) {
        const m = this.#meta?.(node) ?? null;
        if (m === null) continue;
        metas.set(node, m);
        this.#stmt.node.run(node, m.run, m.lastSeq, m.lastTime, m.connectedAt, m.lastReceivedAt, m.agentVersion, m.intervalMs, m.facts === null ? null : JSON.stringify(m.facts), JSON.stringify(m.statuses));
      }
      // The step itself is no base unless it is a snapshot: the node's state after it is, as a checkpoint.
      for (const [node, state] of restartState) this.#writeCheckpoint(node, lastId.get(node), state, bases);
      this.#checkpoints(last, lastId, bases, restartAt);
      this.#db.exec('COMMIT');
      for (const node of restartAt.keys()) this.#gapped.delete(node);
      this.#error = null;
      for (const [node, time] of bases) this.#lastBase.set(node, Math.max(time, this.#lastBase.get(node) ?? time));
      for (const [node, entry] of last) {
        const run = metas.get(node)?.run ?? null;
        if (run !== null) for (const l of this.#durable) l(node, run, entry.seq, entry.time);
      }
    } catch (err) {
      try {
        this.#db.exec('ROLLBACK');
      } catch {
        // Nothing to roll back: BEGIN itself failed.
      }
      this.#failedWrites++;
      this.#error = (err as Error).message.slice(0, 300);
      // Nothing is acknowledged, and nothing is lost yet: the writes go back, in order, ahead of any queued since, for the next commit to try.
      this.#pending = batch.concat(this.#pending);
      if (this.#failedWrites <= 5 || this.#failedWrites % 1000 === 0)
        this.#log.error({ path: this.path, err: (err as Error).message, queued: this.#pending.length, failedWrites: this.#failedWrites }, 'the data store could not write: kept the writes for the next commit (not acknowledged to the agents)');
      if (this.#pending.length > this.#maxQueued) this.#giveUp();
    }
  }

  /**
   * Commits kept failing for as long as the queue bound allows: the queued
   * steps go (findings and incidents, few and small, stay queued). Every
   * node that lost steps has a hole in its stored timeline that no later
   * diff can be folded across, so at the next commit that succeeds its
   * stored timeline restarts from its live state.
   */
  #giveUp(): void {
    const steps = this.#pending.filter((p) => p.kind === 'step');
    for (const p of steps) this.#gapped.add(p.node);
    this.#droppedSteps += steps.length;
    this.#pending = this.#pending.filter((p) => p.kind !== 'step').slice(-this.#maxQueued);
    this.#log.error(
      { path: this.path, droppedSteps: steps.length, nodes: this.#gapped.size, limit: this.#maxQueued },
      'the data store has failed to write for too long: gave up the steps queued for it; each of these nodes keeps its timeline from its state at the next commit that succeeds, and bundles lack what came before',
    );
  }

  /** Deletes a node's stored steps and checkpoints: what follows does not fold onto them. */
  #restart(node: string): void {
    this.#db.prepare('DELETE FROM steps WHERE node = ?').run(node);
    this.#db.prepare('DELETE FROM checkpoints WHERE node = ?').run(node);
    this.#lastBase.delete(node);
  }

  /**
   * The finding lines stored from `from` (sample time) on, oldest first, an
   * incident's or not: what the log said, still there after a restart. Read
   * a page at a time; queued lines are committed first. A row that does not
   * read back as a finding line is skipped and counted in `unreadable`.
   */
  *findingLines(from: number, unreadable: { count: number } = { count: 0 }): Generator<FindingLine, void, void> {
    this.flush();
    if (this.#closed) return;
    const page = this.#db.prepare('SELECT id, time, line FROM findings WHERE time > ? OR (time = ? AND id > ?) ORDER BY time, id LIMIT 500');
    let at = { time: from - 1, id: Number.MAX_SAFE_INTEGER };
    for (;;) {
      const rows = page.all(at.time, at.time, at.id);
      for (const row of rows) {
        const line = parseJson(row.line);
        if (line.ok && isFindingLine(line.value)) yield line.value;
        else unreadable.count++;
      }
      const last = rows.at(-1);
      if (last === undefined || rows.length < 500) return;
      at = { time: intOrNull(last.time) ?? at.time, id: intOrNull(last.id) ?? at.id };
    }
  }

  status(): StoreStatus {
    return { path: this.path, temporary: this.temporary, failedCommits: this.#failedWrites, queued: this.#pending.length, droppedSteps: this.#droppedSteps, error: this.#error };
  }

  /**
   * Writes a checkpoint (the live state after the node's last step in this
   * commit) for nodes whose newest base is CHECKPOINT_MS of sample time old,
   * at most CHECKPOINTS_PER_FLUSH of them. The state comes from the view,
   * which has applied exactly the steps queued so far: the commit drained
   * them all, so it is the state after the last one written.
   */
  #checkpoints(last: ReadonlyMap<string, TimelineEntry>, lastId: ReadonlyMap<string, number>, bases: Map<string, number>, restarted: ReadonlyMap<string, unknown>): void {
    if (this.#stateOf === null) return;
    let written = 0;
    for (const [node, entry] of last) {
      if (written >= CHECKPOINTS_PER_FLUSH) break;
      if (restarted.has(node)) continue;
      const base = bases.get(node) ?? this.#lastBase.get(node);
      if (entry.kind === 'snapshot' || (base !== undefined && entry.time - base < this.#checkpointMs)) continue;
      if (this.#checkpoint(node, entry, lastId.get(node), bases)) written++;
    }
  }

  /** The node's live state, when it is the state right after `entry`; else null. */
  #stateAfter(node: string, entry: TimelineEntry): TimelineEntry | null {
    const state = this.#stateOf?.(node) ?? null;
    return state !== null && state.seq === entry.seq && state.time === entry.time ? state : null;
  }

  /** Writes the node's live state as a checkpoint after its stored step `id`, when that state is the one after `entry`. */
  #checkpoint(node: string, entry: TimelineEntry, id: number | undefined, bases: Map<string, number>): boolean {
    const state = this.#stateAfter(node, entry);
    return state !== null && this.#writeCheckpoint(node, id, state, bases);
  }

  #writeCheckpoint(node: string, id: number | undefined, state: TimelineEntry, bases: Map<string, number>): boolean {
    if (id === undefined) return false;
    this.#db.prepare('INSERT OR REPLACE INTO checkpoints (node, after_id, seq, time, frame) VALUES (?, ?, ?, ?, ?)').run(node, id, state.seq, state.time, frameOf(state));
    bases.set(node, state.time);
    return true;
  }

  /**
   * Deletes what left the window: for each node, the steps before its newest
   * base at or before `now - window` (and the bases before that one),
   * incidents no longer held, and finding lines older than the window
   * outside them. Nothing is folded or rewritten: the bases were written as
   * the steps came.
   */
  retain(now: number, liveIncidents: readonly string[]): void {
    this.flush();
    if (this.#closed) return;
    const horizon = now - this.#windowMs;
    try {
      this.#db.exec('BEGIN');
      const checkpoint = this.#db.prepare('SELECT max(after_id) AS id FROM checkpoints WHERE node = ? AND time <= ?');
      const snapshot = this.#db.prepare("SELECT max(id) AS id FROM steps WHERE node = ? AND kind = 'snapshot' AND time <= ?");
      const dropSteps = this.#db.prepare('DELETE FROM steps WHERE node = ? AND id < ?');
      const dropCheckpoints = this.#db.prepare('DELETE FROM checkpoints WHERE node = ? AND after_id < ?');
      for (const row of this.#db.prepare('SELECT DISTINCT node FROM checkpoints UNION SELECT DISTINCT node FROM steps').all()) {
        const node = String(row.node);
        const cp = intOrNull(checkpoint.get(node, horizon)?.id);
        const sn = intOrNull(snapshot.get(node, horizon)?.id);
        if (cp === null && sn === null) continue;
        if (sn !== null && (cp === null || sn > cp)) {
          // The snapshot step is the base: it stays, what precedes it goes.
          dropSteps.run(node, sn);
          dropCheckpoints.run(node, sn);
        } else if (cp !== null) {
          // The checkpoint stands for every step up to after_id.
          dropSteps.run(node, cp + 1);
          dropCheckpoints.run(node, cp);
        }
      }
      this.#db.prepare('DELETE FROM incidents WHERE id NOT IN (SELECT value FROM json_each(?))').run(JSON.stringify(liveIncidents));
      this.#db.prepare('DELETE FROM findings WHERE time < ? AND (incident IS NULL OR incident NOT IN (SELECT id FROM incidents))').run(now - this.#windowMs);
      this.#db.exec('COMMIT');
    } catch (err) {
      try {
        this.#db.exec('ROLLBACK');
      } catch {
        // BEGIN failed.
      }
      this.#log.error({ path: this.path, err: (err as Error).message }, 'the data store could not delete what left the window (it will try again)');
    }
  }

  /**
   * A node's stored steps from `from` to `to`, starting with a full snapshot
   * of the state at `from` (or as near after it as stored): the newest base
   * at or before `from`, with the steps between folded into it. Read a page
   * at a time, so only the base's state and one page are decoded at once.
   * Queued steps are committed first, so the slice reaches the newest one.
   */
  *slice(node: string, from: number, to: number): Generator<TimelineEntry, void, void> {
    this.flush();
    if (this.#closed) return;
    const start = this.#startStateAt(node, from);
    if (start === null) return;
    // Dropped once the first step is out: only the state being folded is held, never the decoded base beside it.
    let state: ReturnType<typeof stateOf> | null = start.state;
    let { seq, time } = start;
    for (const e of this.#stepsAfter(node, start.afterId, () => undefined)) {
      if (state !== null && e.time < from) {
        fold(state, e);
        seq = e.seq;
        time = e.time;
        continue;
      }
      if (e.time > to) break;
      if (state !== null) {
        const first = e.kind === 'snapshot' ? null : snapshotOf(state, seq, time);
        state = null;
        if (first !== null) yield first;
      }
      yield e;
    }
    if (state !== null) yield snapshotOf(state, seq, time);
  }

  /** True when a slice of the node would hold anything: it has a base to start from. */
  has(node: string): boolean {
    this.flush();
    if (this.#closed) return false;
    return this.#db.prepare("SELECT 1 AS x FROM checkpoints WHERE node = ? UNION ALL SELECT 1 FROM steps WHERE node = ? AND kind = 'snapshot' LIMIT 1").get(node, node) !== undefined;
  }

  /** The state of slice()'s base (the newest at or before `from`, else the oldest), as maps: the decoded step itself is not kept past this call. */
  #startStateAt(node: string, from: number): { state: ReturnType<typeof stateOf>; seq: number; time: number; afterId: number } | null {
    const start = this.#startAt(node, from) ?? this.#startAt(node, null);
    if (start === null) return null;
    return { state: stateOf(start.entry), seq: start.entry.seq, time: start.entry.time, afterId: start.afterId };
  }

  /** The newest base at or before `at` (null: the oldest base there is). */
  #startAt(node: string, at: number | null): Start | null {
    const newest = at !== null;
    const t = at ?? Number.MAX_SAFE_INTEGER;
    const order = newest ? 'DESC' : 'ASC';
    const cp = this.#db.prepare(`SELECT after_id AS id, frame FROM checkpoints WHERE node = ? AND time <= ? ORDER BY after_id ${order} LIMIT 1`).get(node, t);
    const sn = this.#db.prepare(`SELECT id, frame FROM steps WHERE node = ? AND kind = 'snapshot' AND time <= ? ORDER BY id ${order} LIMIT 1`).get(node, t);
    const candidates = [cp === undefined ? null : { afterId: Number(cp.id), frame: cp.frame as unknown }, sn === undefined ? null : { afterId: Number(sn.id), frame: sn.frame as unknown }]
      .filter((c): c is { afterId: number; frame: unknown } => c !== null)
      .sort((a, b) => (newest ? b.afterId - a.afterId : a.afterId - b.afterId));
    for (const c of candidates) {
      const entry = entryOf(c.frame, 'snapshot');
      if (entry !== null) return { afterId: c.afterId, entry };
    }
    return null;
  }

  /** A node's steps after step `afterId`, a page at a time; an unreadable one ends them (what follows cannot apply without it). */
  *#stepsAfter(node: string, afterId: number, unreadable: () => void): Generator<TimelineEntry, void, void> {
    const page = this.#db.prepare('SELECT id, kind, frame FROM steps WHERE node = ? AND id > ? ORDER BY id LIMIT ?');
    let after = afterId;
    for (;;) {
      let rows: Record<string, unknown>[];
      try {
        rows = page.all(node, after, PAGE);
      } catch {
        unreadable();
        return;
      }
      if (rows.length === 0) return;
      for (const row of rows) {
        after = Number(row.id);
        const entry = entryOf(row.frame, String(row.kind));
        if (entry === null) {
          unreadable();
          return;
        }
        yield entry;
      }
      if (this.#closed) return;
    }
  }

  /** Drops everything stored for nodes the collector dropped. */
  forget(nodes: readonly string[]): void {
    if (nodes.length === 0 || this.#closed) return;
    this.flush();
    try {
      this.#db.exec('BEGIN');
      for (const table of ['steps', 'bases', 'checkpoints', 'nodes']) {
        const del = this.#db.prepare(`DELETE FROM ${table} WHERE node = ?`);
        for (const n of nodes) del.run(n);
      }
      this.#db.exec('COMMIT');
    } catch (err) {
      try {
        this.#db.exec('ROLLBACK');
      } catch {
        // BEGIN failed.
      }
      this.#log.error({ path: this.path, err: (err as Error).message }, 'the data store could not drop expired nodes');
    }
  }

  /** Commits every FLUSH_MS and runs `retain` every RETAIN_MS until `close`. */
  start(liveIncidents: () => readonly string[], now: () => number = Date.now): void {
    const flush = setInterval(() => this.flush(), FLUSH_MS);
    const retain = setInterval(() => {
      this.retain(now(), liveIncidents());
      if (this.#tempDir !== null) touchTemporaryDir(this.#tempDir);
    }, RETAIN_MS);
    flush.unref();
    retain.unref();
    this.#timers = [flush, retain];
  }

  close(): void {
    if (this.#closed) return;
    for (const t of this.#timers) clearInterval(t);
    this.flush();
    this.#closed = true;
    this.#db.close();
    if (this.#tempDir !== null) {
      rmSync(this.#tempDir, { recursive: true, force: true });
      temporaryDirs.delete(this.#tempDir);
    }
  }

  #load(now: number): Loaded {
    const unreadable: Record<string, number> = {};
    const bad = (what: string): void => {
      unreadable[what] = (unreadable[what] ?? 0) + 1;
    };
    const nodes: RestoredNode[] = [];
    for (const row of this.#db.prepare("SELECT node, max(time) AS time FROM (SELECT node, time FROM checkpoints UNION ALL SELECT node, time FROM steps WHERE kind = 'snapshot') GROUP BY node").all()) {
      const time = intOrNull(row.time);
      if (time !== null) this.#lastBase.set(String(row.node), time);
    }
    for (const row of this.#db.prepare('SELECT * FROM nodes ORDER BY node').all()) {
      const node = strOrNull(row.node);
      if (node === null || !isNodeName(node)) {
        bad('node');
        continue;
      }
      const statuses = parseJson(row.statuses);
      const decodedStatuses = statuses.ok ? statusesSchema.decode(statuses.value, 'statuses') : null;
      const facts = row.facts === null ? ({ ok: true, value: null } as const) : parseJson(row.facts);
      const decodedFacts = facts.ok ? factsSchema.decode(facts.value, 'facts') : null;
      if (decodedStatuses?.ok !== true || decodedFacts?.ok !== true) {
        bad('node');
        continue;
      }
      // Steps are applied from a base: any before the oldest one have nothing to apply on.
      const start = this.#startAt(node, null);
      if (start === null) {
        if (intOrNull(this.#db.prepare('SELECT count(*) AS n FROM checkpoints WHERE node = ?').get(node)?.n) !== 0) bad('base');
        continue;
      }
      const run = strOrNull(row.run);
      let broken = false;
      const stepsAfter = (): Generator<TimelineEntry, void, void> =>
        this.#stepsAfter(node, start.afterId, () => {
          bad('step');
          broken = true;
        });
      // Read as the restore applies them: a node's 15 minutes are never all decoded at once.
      const steps = (function* (): Generator<TimelineEntry, void, void> {
        yield start.entry;
        yield* stepsAfter();
      })();
      nodes.push({
        node,
        // A step that could not be read breaks the chain: the run cannot resume from what applied before it.
        get run(): string | null {
          return broken ? null : run;
        },
        facts: decodedFacts.value,
        agentVersion: strOrNull(row.agent_version),
        intervalMs: intOrNull(row.interval_ms),
        connectedAt: intOrNull(row.connected_at),
        lastReceivedAt: intOrNull(row.last_received_at),
        statuses: decodedStatuses.value,
        steps,
      });
    }
    const incidents: Incident[] = [];
    let opened = 0;
    const findingsOf = this.#db.prepare('SELECT line FROM findings WHERE incident = ? ORDER BY id');
    for (const row of this.#db.prepare('SELECT * FROM incidents ORDER BY ordinal').all()) {
      const id = strOrNull(row.id);
      const nodesJson = parseJson(row.nodes);
      const first = intOrNull(row.first_finding);
      const lastFinding = intOrNull(row.last_finding);
      if (id === null || !nodesJson.ok || !Array.isArray(nodesJson.value) || first === null || lastFinding === null) {
        bad('incident');
        continue;
      }
      opened = Math.max(opened, ordinalOf(id));
      const lines: FindingLine[] = [];
      for (const f of findingsOf.all(id)) {
        const line = parseJson(f.line);
        if (line.ok && isFindingLine(line.value)) lines.push(line.value);
        else bad('finding');
      }
      if (lines.length === 0) {
        bad('incident');
        continue;
      }
      incidents.push({ id, service: strOrNull(row.service), nodes: new Set(nodesJson.value.filter((n): n is string => typeof n === 'string')), findings: lines, firstFinding: first, lastFinding });
    }
    const findings = intOrNull(this.#db.prepare('SELECT count(*) AS n FROM findings WHERE time >= ?').get(now - this.#windowMs)?.n) ?? 0;
    return { nodes, incidents, opened, findings, unreadable };
  }
}
