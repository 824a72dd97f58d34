// The collector's core, free of sockets: frames in, node views and timelines
// out. The server feeds it from WebSockets; `local` feeds it in-process.
import type { Logger } from 'pino';
import { decodeAgentMessage, type AgentMessage, type CaptureRequest, type CollectorMessage, type SourceStatus } from '../../contract/protocol.ts';
import type { NodeFacts } from '../../contract/records.ts';
import { Bounds } from '../state/bounds.ts';
import type { MemoryBudget } from '../state/memory.ts';
import { NodeHistory, type HistoryStore } from '../state/history.ts';
import { MAX_STAGING_MS, maxRecords, NodeView, type ApplyOutcome, type TimelineEntry, type Transition } from '../state/node-view.ts';
import type { SourceName } from '../../contract/sources.ts';

export interface CollectorOptions {
  readonly log: Logger;
  /** How much timeline each node keeps (the incident window). */
  readonly historyMs?: number;
  readonly now?: () => number;
  /** Nodes held at most (connected or within the window); a new node beyond it is refused. */
  readonly maxNodes?: number;
  readonly bounds?: Bounds;
  /** Past this RSS, history is shed before live state (see state/memory.ts). */
  readonly memory?: MemoryBudget | null;
  /** Records held per node and source, when not the defaults of `maxRecords` (a smaller collector, or a test). */
  readonly maxRecords?: (source: SourceName) => number;
  /**
   * Where history lives past its last seconds (the durable store, or its
   * temporary twin); null or absent: the whole window in the heap (replays,
   * bundles, in-process tests).
   */
  readonly historyStore?: HistoryStore | null;
}

/** How often a long-running collector sweeps: nodes gone past the window, snapshots that stopped arriving. */
export const SWEEP_MS = 60_000;

export interface Session {
  /** The node this connection has said it is, once it has said hello. */
  node: string | null;
  readonly remote: string;
  send(msg: CollectorMessage): void;
  /** Ends the connection; in-process sessions have no socket to end. */
  close?(code: number, reason: string): void;
  /** False once the connection is known dead: closed, or silent past the liveness limit. In-process sessions count as dead. */
  alive?(): boolean;
  /** The only node this connection may speak for, when its credentials say so (a TokenReview's pod binding). */
  readonly boundNode?: string | null;
}

/** Why a frame was not applied: a small fixed set, so counters and logs stay bounded. */
export type RejectReason = 'malformed' | 'before-hello' | 'superseded' | 'implausible-time' | 'replayed-seq' | 'wrong-node' | 'duplicate-node' | 'too-many-nodes' | 'binary';

/** Close codes the collector ends an agent connection with (4000-4999: application-defined). */
export const CLOSE = { wrongNode: 4403, duplicate: 4409, superseded: 4410, tooMany: 4429, noHello: 4408 } as const;

/** How far a frame's sample time may lie in the future of the collector's clock. */
const MAX_FUTURE_MS = 10 * 60_000;

/** Where capture frames go: the incidents stage, which asked for them. */
export type CaptureSink = (node: string, msg: Extract<AgentMessage, { type: 'capture-lines' | 'capture-end' | 'capture-pcap' }>) => void;

/** 15 minutes at 1 Hz, with room for faster agents. */
const MAX_TIMELINE_ENTRIES = 4_000;

export type TimelineListener = (node: NodeView, entry: TimelineEntry, transitions: readonly Transition[]) => void;

/** A node as the store kept it: what `Collector.restore` rebuilds it from. */
export interface RestoredNode {
  readonly node: string;
  /** The agent run the stored state belongs to; null when the agent named none. */
  readonly run: string | null;
  readonly facts: NodeFacts | null;
  readonly agentVersion: string | null;
  readonly intervalMs: number | null;
  readonly connectedAt: number | null;
  readonly lastReceivedAt: number | null;
  /** Each source's status as of the last step. */
  readonly statuses: readonly SourceStatus[];
  /** Applied steps, oldest first; the first is a snapshot. Iterated once, as they are applied (the store reads them lazily). */
  readonly steps: Iterable<TimelineEntry>;
}

export class Collector {
  readonly nodes = new Map<string, NodeView>();
  readonly #histories = new Map<string, NodeHistory>();
  readonly #log: Logger;
  readonly #historyMs: number;
  readonly #now: () => number;
  readonly #listeners: TimelineListener[] = [];
  /** The current connection of each node: the only one whose frames are applied and whose close counts. */
  readonly #sessions = new Map<string, Session>();
  readonly #maxNodes: number;
  readonly #maxRecords: (source: SourceName) => number;
  readonly bounds: Bounds;
  /** Frames not applied, by reason. */
  readonly rejected = new Map<RejectReason, number>();
  /** The agent run whose state each node's view holds whole: the only run that may resume from it. */
  readonly #runs = new Map<string, string>();
  /** The run each connection's hello named (agents that keep no journal name none). */
  readonly #sessionRuns = new WeakMap<Session, string>();
  #restoring = false;
  /** Rejections logged per connection and reason; past a few, only every thousandth is logged. */
  readonly #rejectLogged = new WeakMap<Session, Map<RejectReason, number>>();
  #captureSink: CaptureSink | null = null;

  constructor(options: CollectorOptions) {
    this.#log = options.log;
    this.#historyMs = options.historyMs ?? 15 * 60_000;
    this.#now = options.now ?? Date.now;
    this.#maxNodes = options.maxNodes ?? 5_000;
    this.#maxRecords = options.maxRecords ?? maxRecords;
    this.bounds = options.bounds ?? new Bounds(options.log, this.#now);
    this.#memory = options.memory ?? null;
    this.#historyStore = options.historyStore ?? null;
  }

  readonly #historyStore: HistoryStore | null;

  readonly #memory: MemoryBudget | null;

  /** Folds every node's timeline down to `keepMs`; returns the steps folded. */
  shedHistory(keepMs: number): number {
    let folded = 0;
    for (const h of this.#histories.values()) folded += h.shrinkTo(keepMs);
    return folded;
  }

  /** The connection a node's frames are taken from now, if any. */
  currentSession(node: string): Session | undefined {
    return this.#sessions.get(node);
  }

  /** Counts a frame that was not applied and logs it, at most a few times per connection and reason. */
  reject(session: Session, reason: RejectReason, detail: Record<string, unknown>): void {
    this.rejected.set(reason, (this.rejected.get(reason) ?? 0) + 1);
    const view = session.node === null || this.#sessions.get(session.node) !== session ? undefined : this.nodes.get(session.node);
    if (view) view.rejectedFrames++;
    let logged = this.#rejectLogged.get(session);
    if (logged === undefined) this.#rejectLogged.set(session, (logged = new Map()));
    const n = (logged.get(reason) ?? 0) + 1;
    logged.set(reason, n);
    if (n <= 5 || n % 1000 === 0) this.#log.warn({ node: session.node, remote: session.remote, reason, rejectedOnThisConnection: n, ...detail }, `rejected a frame (${reason})`);
  }

  /** Drops nodes that have been disconnected for longer than the history window, with their views and timelines. */
  expire(now = this.#now()): string[] {
    const dropped: string[] = [];
    for (const [name, view] of this.nodes) {
      if (view.connected) continue;
      const last = view.lastReceivedAt ?? view.connectedAt ?? 0;
      if (now - last <= this.#historyMs) continue;
      this.nodes.delete(name);
      this.#histories.delete(name);
      this.#runs.delete(name);
      this.#sessions.delete(name);
      this.bounds.forget(name);
      dropped.push(name);
    }
    if (dropped.length > 0) this.#log.info({ nodes: dropped.slice(0, 20), count: dropped.length, historyMs: this.#historyMs }, 'dropped nodes gone longer than the history window');
    for (const l of this.#expiredListeners) l(dropped);
    return dropped;
  }

  /**
   * One sweep: nodes gone longer than the window are dropped, and a node's
   * snapshot whose parts stopped coming is dropped and asked for again.
   */
  sweep(now = this.#now()): void {
    this.expire(now);
    for (const [name, view] of this.nodes) {
      if (!view.dropStaleStaging(now)) continue;
      const reason = `snapshot took longer than ${MAX_STAGING_MS / 1000} s to arrive`;
      this.#log.warn({ node: name, reason }, 'asking agent for a resync');
      this.#sessions.get(name)?.send({ v: 1, type: 'resync', reason });
    }
  }

  /**
   * Sweeps every `everyMs` (by default SWEEP_MS, or the history window when
   * that is shorter, so a short window is honoured); returns the stop. Only a
   * long-running collector sweeps: replays and bundles run on recorded clocks.
   */
  startSweeping(everyMs = Math.max(1_000, Math.min(SWEEP_MS, this.#historyMs))): () => void {
    const timer = setInterval(() => this.sweep(), everyMs);
    timer.unref();
    return () => clearInterval(timer);
  }

  readonly #expiredListeners: ((nodes: readonly string[]) => void)[] = [];
  /** Called with the nodes `expire` dropped, so stages holding per-node state drop theirs. */
  onExpired(listener: (nodes: readonly string[]) => void): void {
    this.#expiredListeners.push(listener);
  }

  /** Hands capture frames to the stage that keeps them. */
  onCapture(sink: CaptureSink): void {
    this.#captureSink = sink;
  }

  onTimeline(listener: TimelineListener): void {
    this.#listeners.push(listener);
  }

  /** The agent run whose state the node's view holds whole, if it names one. */
  runOf(node: string): string | null {
    return this.#runs.get(node) ?? null;
  }

  /** True while `restore` replays stored steps: listeners that persist them skip these. */
  get restoring(): boolean {
    return this.#restoring;
  }

  /**
   * Tells a node's agent that the store has written its run's steps up to
   * `seq`. Only the current connection of that run hears it; an agent whose
   * hello named no run never gets one.
   */
  acknowledge(node: string, run: string, seq: number, time: number): void {
    const session = this.#sessions.get(node);
    if (session === undefined || this.#sessionRuns.get(session) !== run) return;
    session.send({ v: 1, type: 'ack', run, seq, time, reply: 'durable' });
  }

  /**
   * Rebuilds a node from stored steps (the first a snapshot) at start: its
   * view (state, statuses, facts), its history, and what the timeline
   * listeners derive, by applying each step as it was applied live. The node
   * stays disconnected until its agent says hello; when `run` is set and
   * every step applied, that run may resume from the last step.
   */
  restore(saved: RestoredNode): { applied: number; problem: string | null } {
    const steps = saved.steps[Symbol.iterator]();
    const view = new NodeView(saved.node, this.bounds);
    view.facts = saved.facts;
    view.agentVersion = saved.agentVersion;
    view.intervalMs = saved.intervalMs;
    this.nodes.set(saved.node, view);
    this.#runs.delete(saved.node);
    let applied = 0;
    let problem: string | null = null;
    this.#restoring = true;
    let lastTime: number | null = null;
    try {
      // One step of lookahead: statuses are stored once per node, as of the last step, and go with it.
      let next = steps.next();
      for (let i = 0; next.done !== true; i++) {
        const e = next.value;
        next = steps.next();
        lastTime = e.time;
        const status = next.done === true ? saved.statuses : [];
        const at = saved.lastReceivedAt ?? e.time;
        let outcome: ApplyOutcome;
        if (e.kind === 'snapshot') {
          outcome = { kind: 'staged' };
          for (const c of e.changes) {
            outcome = view.applySnapshotPart({ v: 1, type: 'snapshot', seq: e.seq, time: e.time, source: c.source, part: 0, parts: 1, records: c.added }, at);
            if (outcome.kind !== 'staged') break;
          }
          if (outcome.kind === 'staged') outcome = view.applySnapshotEnd({ v: 1, type: 'snapshot-end', seq: e.seq, time: e.time, status }, at);
        } else outcome = view.applyDiff({ v: 1, type: 'diff', seq: e.seq, time: e.time, changes: e.changes, status }, at);
        if (outcome.kind !== 'applied') {
          problem = `stored step ${i} (seq ${e.seq}, ${e.kind}) did not apply: ${outcome.kind === 'staged' ? 'staged' : outcome.reason}`;
          view.requestResync();
          break;
        }
        this.#record(view, outcome.entry, outcome.transitions);
        applied++;
      }
    } finally {
      this.#restoring = false;
    }
    view.connectedAt = saved.connectedAt;
    view.lastReceivedAt = saved.lastReceivedAt ?? lastTime ?? this.#now();
    if (problem === null && applied > 0 && saved.run !== null) this.#runs.set(saved.node, saved.run);
    return { applied, problem };
  }

  /** Runs `fn` as part of a restore: persisting listeners skip what it records, and the pipeline logs no finding it makes. */
  quietly(fn: () => void): void {
    const was = this.#restoring;
    this.#restoring = true;
    try {
      fn();
    } finally {
      this.#restoring = was;
    }
  }

  timeline(node: string): readonly TimelineEntry[] {
    return this.#histories.get(node)?.entries ?? [];
  }

  history(node: string): NodeHistory | undefined {
    return this.#histories.get(node);
  }

  /** Handles one text frame from an agent. Bad frames are rejected, counted and logged; state is untouched. */
  receive(session: Session, text: string): void {
    const decoded = decodeAgentMessage(text);
    if (!decoded.ok) {
      this.reject(session, 'malformed', { error: decoded.error.slice(0, 300), bytes: text.length });
      return;
    }
    const msg = decoded.msg;
    // Sample times are the agent's clock: a frame far in the future or older
    // than the window would land outside every slice and confuse ordering.
    if ('time' in msg) {
      const now = this.#now();
      if (msg.time > now + MAX_FUTURE_MS || msg.time < now - this.#historyMs - 3_600_000) {
        this.reject(session, 'implausible-time', { type: msg.type, time: msg.time, collectorTime: now });
        return;
      }
    }
    this.accept(session, msg);
  }
  /** Asks a connected node's agent for a capture; false when that node is not connected. */
  requestCapture(node: string, req: CaptureRequest): boolean {
    const session = this.#sessions.get(node);
    if (session === undefined || this.nodes.get(node)?.connected !== true) return false;
    session.send(req);
    return true;
  }

  /** A connection ended. Only the node's current connection counts: a superseded one closing late changes nothing. */
  disconnect(session: Session, code: number): void {
    if (session.node === null || this.#sessions.get(session.node) !== session) return;
    this.#sessions.delete(session.node);
    const view = this.nodes.get(session.node);
    if (view === undefined) return;
    view.onDisconnect();
    this.#log.warn({ node: session.node, remote: session.remote, code }, 'agent disconnected');
  }

  #hello(session: Session, msg: Extract<AgentMessage, { type: 'hello' }>, now: number): void {
    if (session.boundNode != null && session.boundNode !== msg.node) {
      this.reject(session, 'wrong-node', { claimed: msg.node, provenNode: session.boundNode });
      session.close?.(CLOSE.wrongNode, 'this connection may only speak for the node its token was issued on');
      return;
    }
    if (session.node !== null && session.node !== msg.node) {
      this.reject(session, 'wrong-node', { claimed: msg.node });
      session.close?.(CLOSE.wrongNode, 'a connection speaks for one node');
      return;
    }
    const current = this.#sessions.get(msg.node);
    if (current !== undefined && current !== session) {
      if (current.alive?.() === true) {
        // Two live agents for one node: keep the one we have; the other retries and gets in once this one is gone.
        this.reject(session, 'duplicate-node', { claimed: msg.node, currentRemote: current.remote });
        session.close?.(CLOSE.duplicate, 'this node already has a live connection');
        return;
      }
      this.#log.warn({ node: msg.node, remote: session.remote, previousRemote: current.remote }, 'a new connection replaces a dead one for this node');
      this.#sessions.delete(msg.node);
      current.close?.(CLOSE.superseded, 'superseded by a newer connection for this node');
    }
    let view = this.nodes.get(msg.node);
    if (view === undefined) {
      if (this.nodes.size >= this.#maxNodes) this.expire(now);
      if (this.nodes.size >= this.#maxNodes) {
        this.bounds.hit('nodes', 'collector', this.#maxNodes, 'new nodes refused until one leaves the window');
        this.reject(session, 'too-many-nodes', { claimed: msg.node });
        session.close?.(CLOSE.tooMany, 'the collector holds as many nodes as it may');
        return;
      }
      view = new NodeView(msg.node, this.bounds, this.#maxRecords);
      this.nodes.set(msg.node, view);
    }
    session.node = msg.node;
    this.#sessions.set(msg.node, session);
    const run = msg.run ?? null;
    // The same agent run coming back to a view that is whole: its journal can bring the view up to date, no snapshot needed.
    const resumable = run !== null && this.#runs.get(msg.node) === run && !view.awaitingSnapshot && view.lastSeq !== null;
    if (resumable) {
      view.connected = true;
      view.connectedAt = now;
    } else {
      view.onConnect(now);
      this.#runs.delete(msg.node);
    }
    if (run !== null) this.#sessionRuns.set(session, run);
    view.agentVersion = msg.agentVersion;
    view.intervalMs = msg.intervalMs;
    this.#log.info(
      { node: msg.node, remote: session.remote, agentVersion: msg.agentVersion, intervalMs: msg.intervalMs, run, ...(resumable ? { resumeAfterSeq: view.lastSeq } : {}) },
      resumable ? 'agent connected; it resumes its run after the last step held' : 'agent connected',
    );
    if (run !== null) session.send({ v: 1, type: 'ack', run, seq: resumable ? view.lastSeq : null, time: resumable ? view.lastSampleTime : null, reply: 'hello' });
  }

  /** Handles one decoded message: what the socket end feeds after decoding, and what in-process agents (local, replay, doctor, bundles) feed directly. */
  accept(session: Session, msg: AgentMessage): void {
    const now = this.#now();
    if (msg.type === 'hello') {
      this.#hello(session, msg, now);
      return;
    }
    if (session.node === null) {
      this.reject(session, 'before-hello', { type: msg.type });
      return;
    }
    if (this.#sessions.get(session.node) !== session) {
      this.reject(session, 'superseded', { type: msg.type });
      return;
    }
    const view = this.nodes.get(session.node);
    if (view === undefined) {
      this.reject(session, 'before-hello', { type: msg.type });
      return;
    }
    if (msg.type === 'diff' && view.lastSeq !== null && msg.seq <= view.lastSeq && !view.awaitingSnapshot) {
      this.reject(session, 'replayed-seq', { seq: msg.seq, lastSeq: view.lastSeq });
      return;
    }
    let outcome: ApplyOutcome;
    switch (msg.type) {
      case 'facts':
        view.facts = msg.facts;
        this.#log.info({ node: view.name, kernel: msg.facts.kernel, os: msg.facts.os }, 'node facts');
        return;
      case 'capture-pcap':
      case 'capture-lines':
      case 'capture-end': {
        // Captures belong to the incidents stage; without one listening, nobody asked for any.
        if (this.#captureSink === null) {
          this.#log.warn({ node: view.name, id: msg.id }, 'ignored capture output nobody asked for');
          return;
        }
        this.#captureSink(view.name, msg);
        return;
      }
      case 'snapshot':
        outcome = view.applySnapshotPart(msg, now);
        break;
      case 'snapshot-end':
        outcome = view.applySnapshotEnd(msg, now);
        break;
      case 'diff':
        outcome = view.applyDiff(msg, now);
        break;
      default: {
        const never: never = msg;
        return never;
      }
    }
    switch (outcome.kind) {
      case 'applied': {
        if (msg.type === 'snapshot-end') {
          // The view now holds this run's state whole (or no run's, for an agent that names none).
          const run = this.#sessionRuns.get(session);
          if (run === undefined) this.#runs.delete(view.name);
          else this.#runs.set(view.name, run);
        }
        this.#record(view, outcome.entry, outcome.transitions);
        if (msg.type === 'snapshot-end') {
          this.#log.info({ node: view.name, seq: msg.seq, sources: summarise(view) }, 'snapshot applied');
          for (const st of msg.status) if (st.state !== 'ok' || st.problemCount > 0) this.#logStatus(view.name, st);
        } else if (msg.type === 'diff') {
          for (const st of msg.status) this.#logStatus(view.name, st);
        }
        break;
      }
      case 'resync':
        this.#log.warn({ node: view.name, reason: outcome.reason }, 'asking agent for a resync');
        session.send({ v: 1, type: 'resync', reason: outcome.reason });
        break;
      case 'staged':
      case 'ignored':
        break;
      default: {
        const never: never = outcome;
        void never;
      }
    }
  }

  #logStatus(node: string, st: SourceStatus): void {
    // Problem lines are the node's own text: cut short so one bad source cannot flood the log.
    const problems = st.problems.map((p) => ({ line: p.line, reason: p.reason.slice(0, 300), text: p.text.length > 300 ? `${p.text.slice(0, 300)}…` : p.text }));
    const fields = { node, source: st.source, state: st.state, via: st.via, reason: st.reason, records: st.records, problemCount: st.problemCount, problems };
    if (st.state === 'ok' && st.problemCount === 0) this.#log.info(fields, 'source ok');
    else if (st.state === 'ok') this.#log.warn(fields, 'source has lines it could not read');
    else if (st.state === 'unavailable') this.#log.info(fields, 'source unavailable on this node; skipped');
    else this.#log.warn(fields, 'source failed this tick');
  }

  #record(view: NodeView, entry: TimelineEntry, transitions: readonly Transition[]): void {
    let history = this.#histories.get(view.name);
    if (history === undefined) {
      history = new NodeHistory(this.#historyMs, MAX_TIMELINE_ENTRIES, this.#historyStore === null ? null : { store: this.#historyStore, node: view.name });
      this.#histories.set(view.name, history);
    }
    if (history.push(entry) && history.overflowed === 1)
      this.#log.warn({ node: view.name, maxEntries: MAX_TIMELINE_ENTRIES, historyMs: this.#historyMs }, 'history bound hit: this node sends more steps than the window can keep; older steps are folded early');
    for (const l of this.#listeners) l(view, entry, transitions);
    const shed = this.#memory?.check(this.#now(), this.#historyStore === null ? this : null);
    if (shed != null)
      this.bounds.hit(
        'memory',
        'collector',
        this.#memory?.budget ?? 0,
        shed.folded < 0
          ? 'RSS is over the memory budget with history already in the store: what is in memory is live state, nothing was shed (give the collector more memory, or fewer nodes)'
          : `history shortened to ${Math.round(shed.keepMs / 1000)} s to stay under the memory budget (live state kept)`,
      );
  }
}

function summarise(view: NodeView): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of view.sources()) out[s] = view.recordMap(s).size;
  return out;
}
