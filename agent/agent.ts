// The agent's lifecycle: a disciplined 1 Hz tick (skipped and counted while the
// previous one runs, never rejecting) feeding a WebSocket connection that
// starts with a full snapshot and then streams one diff per tick. Every diff
// also goes into a bounded journal, connected or not: on reconnect the
// collector says up to which seq of this run it holds the node's state, and
// the agent sends what follows from the journal when it reaches back that
// far, and a snapshot only otherwise (saying which, with the gap).
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import { encode, decodeCollectorMessage, SUBPROTOCOL, type Ack, type AgentMessage, type CaptureRequest } from '../contract/protocol.ts';
import { DEFAULT_JOURNAL, Journal, type JournalBounds } from './journal.ts';
import type { CaptureSink } from './capture.ts';
import { jittered, watchLiveness } from './liveness.ts';
import type { NodeFacts } from '../contract/records.ts';
import type { AgentMeter } from './metrics.ts';
import type { NodeState } from './node-state.ts';

export interface AgentOptions {
  readonly node: string;
  readonly collectorUrl: string;
  readonly intervalMs: number;
  /**
   * The bearer token, or how to read it: read again on every (re)connect,
   * because a projected ServiceAccount token is rewritten by the kubelet
   * before it expires. A read that throws keeps the last token read.
   */
  readonly token: string | null | (() => string | null);
  readonly version: string;
  readonly state: NodeState;
  readonly log: Logger;
  readonly readFacts: () => Promise<NodeFacts>;
  /** TLS: extra CA bundle for wss:// */
  readonly ca?: string;
  /** Ping interval and liveness limit (agent/liveness.ts), shortened by tests. */
  readonly pingIntervalMs?: number;
  readonly livenessMs?: number;
  /** Bounds of the diff journal (default 15 minutes or 64 MiB, whichever is smaller); maxBytes 0 turns it off. */
  readonly journal?: JournalBounds;
  /** Told of every frame sent and every connection opened (agent/metrics.ts). */
  readonly metrics?: AgentMeter;
}

/** How long the agent waits for the collector to answer its hello before starting over with a snapshot (a collector that predates acks never answers). */
const HELLO_ACK_MS = 5_000;

/** Above this much unsent data the agent stops queueing diffs and resyncs when the socket drains. */
const MAX_BUFFERED_BYTES = 64 * 1024 * 1024;
const FACTS_EVERY_MS = 60_000;
/** How much a snapshot may queue on the socket before its next chunk is made. */
const SNAPSHOT_DRAIN_BYTES = 1024 * 1024;
/**
 * Records per snapshot frame. The protocol allows up to 5,000 (SNAPSHOT_CHUNK); the
 * agent sends fewer: a 5,000-record frame is a 2.5 MB string and buffer, and
 * big short-lived buffers are what grow the allocator's heap for good.
 */
const SNAPSHOT_SEND_RECORDS = 1_000;

/** Node's codes for a server certificate it cannot verify: a trust problem to name, not a network blip. */
const TLS_TRUST_ERRORS = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_HAS_EXPIRED', 'ERR_TLS_CERT_ALTNAME_INVALID']);

export class Agent {
  readonly #o: AgentOptions;
  #ws: WebSocket | null = null;
  #connected = false;
  /** A full snapshot went out on this connection: the collector's view of the node is whole. */
  #streaming = false;
  #lastTickAt: number | null = null;
  #needSnapshot = true;
  #seq = 0;
  #ticking = false;
  #skippedTicks = 0;
  #timer: NodeJS.Timeout | null = null;
  #reconnectTimer: NodeJS.Timeout | null = null;
  #backoffMs = 500;
  #stopped = false;
  #facts: NodeFacts | null = null;
  #factsAt = 0;
  #overflowLogged = false;
  #lastToken: string | null = null;
  #tokenProblem: string | null = null;
  readonly #capturing = new Set<string>();
  readonly #journal: Journal;
  /** This process's run: seqs count from 0 again in every run, so the collector resumes only the run it holds. */
  readonly #run: string;
  readonly #startedAt = Date.now();
  /** Waiting for the collector's answer to hello (what it holds of this run); ticks journal but send nothing meanwhile. */
  #awaitingAck = false;
  #ackTimer: NodeJS.Timeout | null = null;
  /** Sending journaled frames to catch the collector up; ticks journal but send nothing meanwhile. */
  #catchingUp = false;
  /** The last seq the collector said it made durable. */
  #durableSeq: number | null = null;

  constructor(options: AgentOptions) {
    this.#o = options;
    this.#journal = new Journal(options.journal ?? DEFAULT_JOURNAL);
    this.#run = `${this.#startedAt.toString(36)}-${randomBytes(6).toString('hex')}`;
  }

  /** What the journal holds and what the collector has acknowledged, for logs and tests. */
  journalState(): { run: string; base: number | null; lastSeq: number | null; frames: number; bytes: number; durableSeq: number | null } {
    return { run: this.#run, base: this.#journal.base, lastSeq: this.#journal.lastSeq, frames: this.#journal.size, bytes: this.#journal.bytes, durableSeq: this.#durableSeq };
  }

  start(): void {
    this.#connect();
    void this.#tick();
    this.#timer = setInterval(() => void this.#tick(), this.#o.intervalMs);
  }

  stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    if (this.#reconnectTimer) clearTimeout(this.#reconnectTimer);
    const ws = this.#ws;
    if (ws === null || ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      ws.once('close', () => resolve());
      ws.close(1001, 'agent stopping');
      setTimeout(() => { ws.terminate(); resolve(); }, 1_000).unref();
    });
  }

  /** What the health endpoints report: sampling is alive, and the collector has this node's state. */
  health(): { lastTickAt: number | null; connected: boolean; streaming: boolean; intervalMs: number } {
    return { lastTickAt: this.#lastTickAt, connected: this.#connected, streaming: this.#connected && this.#streaming, intervalMs: this.#o.intervalMs };
  }

  get skippedTicks(): number {
    return this.#skippedTicks;
  }

  #connect(): void {
    if (this.#stopped) return;
    const headers: Record<string, string> = {};
    const token = this.#token();
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const ws = new WebSocket(this.#o.collectorUrl, SUBPROTOCOL, { headers, maxPayload: 16 * 1024 * 1024, ...(this.#o.ca ? { ca: this.#o.ca } : {}) });
    /** The collector answered the upgrade with an HTTP error: logged once, not again as a socket error. */
    let refused = false;
    this.#ws = ws;
    const stopLiveness = watchLiveness(ws, (silentMs) => this.#o.log.warn({ silentMs, collector: this.#o.collectorUrl }, 'collector connection silent past the liveness limit; reconnecting'), this.#o.pingIntervalMs, this.#o.livenessMs);
    ws.on('open', () => {
      this.#o.metrics?.opened();
      this.#connected = true;
      this.#backoffMs = 500;
      this.#o.log.info({ collector: this.#o.collectorUrl }, 'connected to collector');
      const journal = this.#journal.enabled;
      this.#send({ v: 1, type: 'hello', node: this.#o.node, agentVersion: this.#o.version, intervalMs: this.#o.intervalMs, startedAt: this.#startedAt, ...(journal ? { run: this.#run } : {}) });
      if (this.#facts) this.#send({ v: 1, type: 'facts', facts: this.#facts });
      if (!journal) {
        this.#startOver();
        return;
      }
      // The collector's answer decides between the journal and a snapshot.
      this.#awaitingAck = true;
      if (this.#ackTimer) clearTimeout(this.#ackTimer);
      this.#ackTimer = setTimeout(() => {
        if (!this.#awaitingAck || this.#ws !== ws) return;
        this.#awaitingAck = false;
        this.#o.log.info({ waitedMs: HELLO_ACK_MS }, 'the collector did not say what it holds of this run (it predates acks): starting over with a snapshot');
        this.#startOver();
      }, HELLO_ACK_MS);
      this.#ackTimer.unref();
    });
    ws.on('message', (data) => {
      const decoded = decodeCollectorMessage(data.toString());
      if (!decoded.ok) {
        this.#o.log.warn({ error: decoded.error }, 'ignored a malformed message from the collector');
        return;
      }
      switch (decoded.msg.type) {
        case 'resync':
          this.#o.log.info({ reason: decoded.msg.reason }, 'collector asked for a resync');
          this.#needSnapshot = true;
          break;
        case 'capture':
          this.#capture(decoded.msg);
          break;
        case 'ack':
          this.#ack(decoded.msg);
          break;
        default: {
          const never: never = decoded.msg;
          void never;
        }
      }
    });
    ws.on('unexpected-response', (_req, res) => {
      const why =
        res.statusCode === 503
          ? 'collector cannot check our token right now (its Kubernetes API is unavailable); retrying'
          : res.statusCode !== 401
            ? 'collector refused the connection'
            : token === null
              ? 'collector requires a token and this agent has none (--token-file or CONNTRAIL_TOKEN)'
              : 'collector refused our token';
      this.#o.log.error({ status: res.statusCode, collector: this.#o.collectorUrl }, why);
      // Handling this event leaves the handshake open and no 'close' follows:
      // end it, so the reconnect loop runs (a fixed Secret must be picked up).
      refused = true;
      ws.terminate();
    });
    ws.on('error', (err: Error & { code?: string }) => {
      if (refused) return;
      if (err.code !== undefined && TLS_TRUST_ERRORS.has(err.code))
        this.#o.log.error({ err: err.message, code: err.code, collector: this.#o.collectorUrl }, "collector's TLS certificate is not trusted: pass the CA that signed it with --ca");
      else this.#o.log.warn({ err: err.message, collector: this.#o.collectorUrl }, 'collector connection error');
    });
    ws.on('close', (code) => {
      const wasConnected = this.#connected;
      this.#connected = false;
      this.#streaming = false;
      this.#awaitingAck = false;
      this.#ws = null;
      stopLiveness();
      if (wasConnected && this.#journal.enabled) this.#o.log.info({ durableSeq: this.#durableSeq, seq: this.#seq }, 'diffs go into the journal until the collector is back');
      if (this.#stopped) return;
      if (wasConnected) this.#o.log.warn({ code }, 'collector connection closed; reconnecting');
      this.#reconnectTimer = setTimeout(() => this.#connect(), jittered(this.#backoffMs));
      this.#backoffMs = Math.min(this.#backoffMs * 2, 10_000);
    });
  }

  /** Sends a snapshot now from the last completed tick (or lets the running tick send it), so the collector has state at once. */
  #startOver(): void {
    this.#needSnapshot = true;
    if (!this.#ticking && this.#seq > 0) {
      this.#ticking = true;
      void this.#sendSnapshot(Date.now()).finally(() => (this.#ticking = false));
    }
  }

  #ack(msg: Ack): void {
    if (msg.run !== this.#run) {
      this.#o.log.warn({ run: msg.run, ourRun: this.#run }, 'ignored an ack for another agent run');
      return;
    }
    if (msg.reply === 'durable') {
      this.#durableSeq = msg.seq;
      return;
    }
    if (!this.#awaitingAck) return;
    this.#awaitingAck = false;
    if (this.#ackTimer) clearTimeout(this.#ackTimer);
    const plan = this.#journal.plan(msg.seq, msg.time);
    if (plan.kind === 'resume') {
      this.#o.log.info({ collectorSeq: msg.seq, fromSeq: plan.fromSeq, toSeq: plan.toSeq, frames: plan.frames }, plan.frames === 0 ? 'resuming: the collector holds every step of this run' : `resuming from the journal: sending the ${plan.frames} steps the collector missed`);
      this.#needSnapshot = false;
      void this.#catchUp(plan.fromSeq - 1);
      return;
    }
    if (plan.gap !== null)
      this.#o.log.warn({ collectorSeq: msg.seq, reason: plan.reason, lostFromSeq: plan.gap.fromSeq, lostToSeq: plan.gap.toSeq, lostSteps: plan.gap.toSeq - plan.gap.fromSeq + 1, lostSeconds: plan.gap.seconds }, 'starting over with a snapshot: the journal does not reach back to what the collector holds, and the steps between are lost');
    else this.#o.log.info({ collectorSeq: msg.seq, reason: plan.reason }, 'starting over with a snapshot');
    this.#startOver();
  }

  /**
   * Sends the journaled frames after `after` in order, waiting for the socket
   * to drain between them, until it has sent the newest: then live diffs
   * follow on. Ticks meanwhile only journal, so nothing is sent twice or out
   * of order.
   */
  async #catchUp(after: number): Promise<void> {
    const ws = this.#ws;
    this.#catchingUp = true;
    let sent = after;
    try {
      while (this.#connected && this.#ws === ws && !this.#needSnapshot) {
        const frame = this.#journal.frameAfter(sent);
        if (frame === undefined) {
          if (this.#journal.lastSeq === sent) {
            this.#streaming = true;
            return;
          }
          // The chain moved on without this connection (a bound dropped frames, or a source lost track): a snapshot is the only way left.
          this.#o.log.warn({ sentSeq: sent, journalBase: this.#journal.base, journalLastSeq: this.#journal.lastSeq }, 'the journal lost frames while catching the collector up: starting over with a snapshot');
          this.#startOver();
          return;
        }
        await this.#drained(SNAPSHOT_DRAIN_BYTES);
        if (!this.#connected || this.#ws !== ws || this.#needSnapshot) break;
        ws?.send(frame.text);
        this.#o.metrics?.sent(frame.text);
        sent = frame.seq;
      }
      if (this.#needSnapshot && this.#connected && this.#ws === ws) this.#startOver();
    } finally {
      this.#catchingUp = false;
    }
  }

  #token(): string | null {
    const source = this.#o.token;
    if (typeof source !== 'function') return source;
    try {
      this.#lastToken = source();
      if (this.#tokenProblem !== null) this.#o.log.info('token file readable again');
      this.#tokenProblem = null;
    } catch (err) {
      const problem = err instanceof Error ? err.message : String(err);
      if (problem !== this.#tokenProblem) this.#o.log.warn({ err: problem }, 'cannot read the token file; using the token read before');
      this.#tokenProblem = problem;
    }
    return this.#lastToken;
  }

  #capture(req: CaptureRequest): void {
    if (this.#capturing.has(req.id)) return;
    this.#capturing.add(req.id);
    this.#o.log.info({ id: req.id, hosts: req.hosts, ports: req.ports, durationMs: req.durationMs }, 'capture requested');
    const sink: CaptureSink = {
      lines: (tool, lines) => this.#send({ v: 1, type: 'capture-lines', id: req.id, tool, lines }),
      pcap: (bytes) => this.#send({ v: 1, type: 'capture-pcap', id: req.id, base64: bytes.toString('base64') }),
      end: (tool, error) => {
        if (error !== null) this.#o.log.warn({ id: req.id, tool, error }, 'capture tool unavailable or failed');
        this.#send({ v: 1, type: 'capture-end', id: req.id, tool, error });
      },
    };
    // Loaded on the first capture: node-pty, a native addon, costs memory on every node that never captures.
    void import('./capture.ts')
      .then(({ runCapture }) => runCapture(req, sink))
      .catch((err: unknown) => this.#o.log.error({ err, id: req.id }, 'capture failed'))
      .finally(() => this.#capturing.delete(req.id));
  }

  async #tick(): Promise<void> {
    if (this.#ticking) {
      this.#skippedTicks++;
      return;
    }
    this.#ticking = true;
    try {
      await this.#refreshFacts();
      const holding = this.#awaitingAck || this.#catchingUp;
      // A tick that ends in a snapshot sends no diff: its changes need not be made,
      // unless the journal keeps them (disconnected, or waiting to catch up).
      const snapshotNext = this.#connected && this.#needSnapshot && !holding;
      const wantChanges = !snapshotNext && (this.#journal.chained || (this.#connected && !this.#needSnapshot));
      const result = await this.#o.state.tick(wantChanges);
      this.#lastTickAt = Date.now();
      this.#seq++;
      let frame: string | null = null;
      if (this.#o.state.takeResync()) {
        this.#needSnapshot = true;
        this.#journal.break();
      } else if (wantChanges) {
        frame = encode({ v: 1, type: 'diff', seq: this.#seq, time: result.time, changes: result.changes, status: result.statusChanges });
        this.#journal.push(this.#seq, result.time, frame);
      } else if (!this.#needSnapshot) this.#journal.break();
      if (!this.#connected || this.#awaitingAck || this.#catchingUp) return;
      if (this.#needSnapshot || frame === null) await this.#sendSnapshot(result.time);
      else this.#sendDiff(frame);
    } catch (err) {
      // The loop never rejects: a bug in one tick must not stop sampling.
      this.#o.log.error({ err }, 'tick failed');
    } finally {
      this.#ticking = false;
    }
  }

  async #refreshFacts(): Promise<void> {
    if (this.#facts !== null && Date.now() - this.#factsAt < FACTS_EVERY_MS) return;
    this.#factsAt = Date.now();
    try {
      const facts = await this.#o.readFacts();
      const changed = JSON.stringify(facts) !== JSON.stringify(this.#facts);
      this.#facts = facts;
      if (changed && this.#connected) this.#send({ v: 1, type: 'facts', facts });
    } catch (err) {
      this.#o.log.warn({ err: (err as Error).message }, 'cannot read node facts');
    }
  }

  /**
   * Snapshot chunks are made and sent one at a time, waiting for the socket to
   * drain between them, so a 250k-entry table never sits in memory as one
   * encoded blob.
   */
  async #sendSnapshot(time: number): Promise<void> {
    const seq = this.#seq;
    this.#needSnapshot = false;
    this.#journal.snapshotAt(seq, time);
    for (const chunk of this.#o.state.snapshot(SNAPSHOT_SEND_RECORDS)) {
      if (!this.#connected) {
        this.#needSnapshot = true;
        return;
      }
      this.#send({ v: 1, type: 'snapshot', seq, time, ...chunk });
      await this.#drained(SNAPSHOT_DRAIN_BYTES);
    }
    this.#send({ v: 1, type: 'snapshot-end', seq, time, status: this.#o.state.statuses() });
    this.#streaming = true;
  }

  #drained(below: number): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        const ws = this.#ws;
        if (ws === null || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount <= below) resolve();
        else setTimeout(check, 5);
      };
      check();
    });
  }

  #sendDiff(frame: string): void {
    const ws = this.#ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      if (this.#journal.chained) {
        // The frame is journaled: hold live sending and catch up from the journal as the socket drains.
        if (!this.#overflowLogged) this.#o.log.warn({ bufferedBytes: ws.bufferedAmount, limit: MAX_BUFFERED_BYTES }, 'send queue full: holding diffs in the journal until it drains');
        this.#overflowLogged = true;
        void this.#catchUp(this.#seq - 1);
        return;
      }
      // Dropping one diff breaks the chain; the collector would see a gap.
      // Resync with a snapshot once the socket has drained instead.
      if (!this.#overflowLogged) this.#o.log.warn({ bufferedBytes: ws.bufferedAmount, limit: MAX_BUFFERED_BYTES }, 'send queue full: dropping diffs until it drains, then resyncing');
      this.#overflowLogged = true;
      this.#needSnapshot = true;
      return;
    }
    this.#overflowLogged = false;
    ws.send(frame);
    this.#o.metrics?.sent(frame);
  }

  #send(msg: AgentMessage): void {
    const ws = this.#ws;
    if (ws === null || ws.readyState !== WebSocket.OPEN) return;
    const text = encode(msg);
    ws.send(text);
    this.#o.metrics?.sent(text);
  }
}
