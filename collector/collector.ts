// The collector's core, free of sockets: frames in, node views and timelines
// out. The server feeds it from WebSockets; `local` feeds it in-process.
import type { Logger } from 'pino';
import { decodeAgentMessage, type AgentMessage, type CaptureRequest, type CaptureTool, type CollectorMessage, type SourceStatus } from '../contract/protocol.ts';
import { NodeHistory } from './history.ts';
import { NodeView, type ApplyOutcome, type TimelineEntry, type Transition } from './node-view.ts';

export interface CollectorOptions {
  readonly log: Logger;
  /** How much timeline each node keeps (the incident window). */
  readonly historyMs?: number;
  readonly now?: () => number;
}

export interface Session {
  /** The node this connection has said it is, once it has said hello. */
  node: string | null;
  readonly remote: string;
  send(msg: CollectorMessage): void;
}

/** Lines kept per capture, node and tool. */
const MAX_CAPTURE_LINES = 50_000;

/** 15 minutes at 1 Hz, with room for faster agents. */
const MAX_TIMELINE_ENTRIES = 4_000;

export type TimelineListener = (node: NodeView, entry: TimelineEntry, transitions: readonly Transition[]) => void;

export class Collector {
  readonly nodes = new Map<string, NodeView>();
  readonly #histories = new Map<string, NodeHistory>();
  readonly #log: Logger;
  readonly #historyMs: number;
  readonly #now: () => number;
  readonly #listeners: TimelineListener[] = [];
  readonly #sessions = new Map<string, Session>();
  /** Capture output by capture id, node and tool. */
  readonly captures = new Map<string, Map<string, Map<CaptureTool, { lines: string[]; ended: boolean; error: string | null }>>>();
  /** pcap files by capture id and node. */
  readonly pcaps = new Map<string, Map<string, Buffer>>();

  constructor(options: CollectorOptions) {
    this.#log = options.log;
    this.#historyMs = options.historyMs ?? 15 * 60_000;
    this.#now = options.now ?? Date.now;
  }

  onTimeline(listener: TimelineListener): void {
    this.#listeners.push(listener);
  }

  timeline(node: string): readonly TimelineEntry[] {
    return this.#histories.get(node)?.entries ?? [];
  }

  history(node: string): NodeHistory | undefined {
    return this.#histories.get(node);
  }

  /** Handles one text frame from an agent. Bad frames are rejected and logged; state is untouched. */
  receive(session: Session, text: string): void {
    const decoded = decodeAgentMessage(text);
    if (!decoded.ok) {
      const view = session.node === null ? undefined : this.nodes.get(session.node);
      if (view) view.rejectedFrames++;
      this.#log.warn({ node: session.node, remote: session.remote, error: decoded.error, bytes: text.length }, 'rejected a malformed frame');
      return;
    }
    this.accept(session, decoded.msg);
  }

  /** Asks a connected node's agent for a capture; false when that node is not connected. */
  requestCapture(node: string, req: CaptureRequest): boolean {
    const session = this.#sessions.get(node);
    if (session === undefined || this.nodes.get(node)?.connected !== true) return false;
    session.send(req);
    return true;
  }

  disconnect(session: Session, code: number): void {
    if (session.node === null) return;
    if (this.#sessions.get(session.node) === session) this.#sessions.delete(session.node);
    const view = this.nodes.get(session.node);
    if (view === undefined) return;
    view.onDisconnect();
    this.#log.warn({ node: session.node, remote: session.remote, code }, 'agent disconnected');
  }

  /** Handles one decoded message: what the socket end feeds after decoding, and what in-process agents (local, replay, doctor, bundles) feed directly. */
  accept(session: Session, msg: AgentMessage): void {
    const now = this.#now();
    if (msg.type === 'hello') {
      session.node = msg.node;
      this.#sessions.set(msg.node, session);
      let view = this.nodes.get(msg.node);
      if (view === undefined) {
        view = new NodeView(msg.node);
        this.nodes.set(msg.node, view);
      }
      view.onConnect(now);
      view.agentVersion = msg.agentVersion;
      view.intervalMs = msg.intervalMs;
      this.#log.info({ node: msg.node, remote: session.remote, agentVersion: msg.agentVersion, intervalMs: msg.intervalMs }, 'agent connected');
      return;
    }
    const view = session.node === null ? undefined : this.nodes.get(session.node);
    if (view === undefined) {
      this.#log.warn({ remote: session.remote, type: msg.type }, 'rejected a frame sent before hello');
      return;
    }
    let outcome: ApplyOutcome;
    switch (msg.type) {
      case 'facts':
        view.facts = msg.facts;
        this.#log.info({ node: view.name, kernel: msg.facts.kernel, os: msg.facts.os }, 'node facts');
        return;
      case 'capture-pcap': {
        const byNode = this.pcaps.get(msg.id);
        if (byNode === undefined) {
          this.#log.warn({ node: view.name, id: msg.id }, 'ignored a pcap nobody asked for');
          return;
        }
        const pcap = Buffer.from(msg.base64, 'base64');
        byNode.set(view.name, pcap);
        this.#log.info({ node: view.name, id: msg.id, bytes: pcap.length }, 'capture pcap received');
        return;
      }
      case 'capture-lines':
      case 'capture-end': {
        const byNode = this.captures.get(msg.id);
        // Only captures this collector asked for are kept.
        if (byNode === undefined) {
          this.#log.warn({ node: view.name, id: msg.id }, 'ignored capture output nobody asked for');
          return;
        }
        let byTool = byNode.get(view.name);
        if (byTool === undefined) byNode.set(view.name, (byTool = new Map()));
        let c = byTool.get(msg.tool);
        if (c === undefined) byTool.set(msg.tool, (c = { lines: [], ended: false, error: null }));
        if (msg.type === 'capture-lines') {
          if (c.lines.length < MAX_CAPTURE_LINES) c.lines.push(...msg.lines.slice(0, MAX_CAPTURE_LINES - c.lines.length));
        } else {
          c.ended = true;
          c.error = msg.error;
          this.#log.info({ node: view.name, id: msg.id, tool: msg.tool, lines: c.lines.length, error: msg.error }, 'capture finished');
        }
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
    const fields = { node, source: st.source, state: st.state, via: st.via, reason: st.reason, records: st.records, problemCount: st.problemCount, problems: st.problems };
    if (st.state === 'ok' && st.problemCount === 0) this.#log.info(fields, 'source ok');
    else if (st.state === 'ok') this.#log.warn(fields, 'source has lines it could not read');
    else if (st.state === 'unavailable') this.#log.info(fields, 'source unavailable on this node; skipped');
    else this.#log.warn(fields, 'source failed this tick');
  }

  #record(view: NodeView, entry: TimelineEntry, transitions: readonly Transition[]): void {
    let history = this.#histories.get(view.name);
    if (history === undefined) {
      history = new NodeHistory(this.#historyMs, MAX_TIMELINE_ENTRIES);
      this.#histories.set(view.name, history);
    }
    if (history.push(entry) && history.overflowed === 1)
      this.#log.warn({ node: view.name, maxEntries: MAX_TIMELINE_ENTRIES, historyMs: this.#historyMs }, 'history bound hit: this node sends more steps than the window can keep; older steps are folded early');
    for (const l of this.#listeners) l(view, entry, transitions);
  }
}

function summarise(view: NodeView): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of view.sources()) out[s] = view.recordMap(s).size;
  return out;
}
