// The wire protocol between agent and collector: a versioned discriminated
// union. The version is also the WebSocket subprotocol, so an agent and a
// collector that do not share a version fail at the upgrade, not mid-stream.
// Every frame is JSON text; the collector decodes it from `unknown` here and
// nowhere else.
import { array, boundedStr, int, literal, nullable, num, object, str, type Decoded, type Infer, type Schema } from './schema.ts';
import { isSourceName, problem, sources, type Problem, type RecordOf, type SourceName } from './sources.ts';
import { nodeFacts, type NodeFacts } from './records.ts';
import { canonicalIp } from './address.ts';
import type { Diff } from './diff.ts';

export const PROTOCOL_VERSION = 1;
export const SUBPROTOCOL = `conntrail.v${PROTOCOL_VERSION}`;
/** Records per snapshot frame: keeps frames well under maxPayload at 250k conntrack entries. */
export const SNAPSHOT_CHUNK = 5_000;
/** Problem lines carried per source status; the rest are counted. */
export const MAX_PROBLEM_SAMPLES = 20;

/** Parts one source's snapshot may come in: 10,000 × SNAPSHOT_CHUNK records is far beyond any node's conntrack table. */
export const MAX_SNAPSHOT_PARTS = 10_000;
/** Times are epoch milliseconds between 2000 and 2100: anything else is a broken clock or a forged frame (and would not even make a Date). */
export const MIN_TIME = Date.UTC(2000, 0, 1);
export const MAX_TIME = Date.UTC(2100, 0, 1);

/** Epoch milliseconds in [MIN_TIME, MAX_TIME]. */
export const time: Schema<number> = {
  describe: 'epoch milliseconds',
  decode: (v, p) =>
    typeof v === 'number' && Number.isFinite(v) && v >= MIN_TIME && v <= MAX_TIME
      ? { ok: true, value: v }
      : { ok: false, error: `${p || '<root>'}: expected epoch milliseconds between 2000 and 2100, got ${typeof v === 'number' ? String(v) : typeof v}` },
};

const seqNumber: Schema<number> = {
  describe: 'sequence number',
  decode: (v, p) => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? { ok: true, value: v } : { ok: false, error: `${p || '<root>'}: expected a sequence number (integer ≥ 0)` }),
};

/**
 * A Kubernetes node name (a DNS-1123 subdomain, at most 253 characters). The
 * collector names log fields, API paths and bundle entries after it, so
 * nothing else may pass as one.
 */
export function isNodeName(v: unknown): v is string {
  return typeof v === 'string' && v.length > 0 && v.length <= 253 && /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(v);
}
export const nodeName: Schema<string> = {
  describe: 'node name',
  decode: (v, p) =>
    isNodeName(v) ? { ok: true, value: v } : { ok: false, error: `${p || '<root>'}: not a Kubernetes node name (lower-case DNS-1123 subdomain, at most 253 characters)` },
};

/** Capture ids name files in bundles; the collector makes them, the agent echoes them. */
const captureId: Schema<string> = {
  describe: 'capture id',
  decode: (v, p) => (typeof v === 'string' && /^[A-Za-z0-9._-]{1,80}$/.test(v) && v !== '.' && v !== '..' ? { ok: true, value: v } : { ok: false, error: `${p || '<root>'}: expected a capture id ([A-Za-z0-9._-]{1,80})` }),
};

export const sourceStatus = object({
  source: boundedStr(64),
  state: literal('ok', 'unavailable', 'failed'),
  /** What was read: `/proc/net/nf_conntrack`, `iptables-nft-save -c`, … */
  via: nullable(boundedStr(1024)),
  reason: nullable(boundedStr(4096)),
  records: int,
  problemCount: int,
  problems: array(problem, MAX_PROBLEM_SAMPLES),
  durationMs: num,
});
export type SourceStatus = Infer<typeof sourceStatus>;

export interface SourceChange<N extends SourceName = SourceName> extends Diff<RecordOf<N>> {
  readonly source: N;
}

/**
 * An agent run: one process lifetime, named at start (its start time and a
 * random part). Sequence numbers count from 0 again in every run, so a seq
 * only means something together with the run it belongs to.
 */
export function isRunId(v: unknown): v is string {
  return typeof v === 'string' && /^[A-Za-z0-9._-]{1,64}$/.test(v);
}

export type AgentMessage =
  | {
      readonly v: 1;
      readonly type: 'hello';
      readonly node: string;
      readonly agentVersion: string;
      readonly intervalMs: number;
      readonly startedAt: number;
      /**
       * This agent run, when the agent keeps a journal and can resume: the
       * collector answers with an `ack` (reply 'hello') saying up to which seq
       * of this run it holds the node's state. An agent without it always
       * starts with a snapshot, and an older collector ignores the field.
       */
      readonly run?: string;
    }
  | { readonly v: 1; readonly type: 'facts'; readonly facts: NodeFacts }
  | {
      readonly v: 1;
      readonly type: 'snapshot';
      readonly seq: number;
      readonly time: number;
      readonly source: SourceName;
      readonly part: number;
      readonly parts: number;
      readonly records: readonly RecordOf<SourceName>[];
    }
  | { readonly v: 1; readonly type: 'snapshot-end'; readonly seq: number; readonly time: number; readonly status: readonly SourceStatus[] }
  | { readonly v: 1; readonly type: 'capture-lines'; readonly id: string; readonly tool: CaptureTool; readonly lines: readonly string[] }
  | { readonly v: 1; readonly type: 'capture-end'; readonly id: string; readonly tool: CaptureTool; readonly error: string | null }
  /** The pcap tcpdump wrote while it printed, base64, sent once at the end (at most MAX_PCAP_BYTES). */
  | { readonly v: 1; readonly type: 'capture-pcap'; readonly id: string; readonly base64: string }
  | {
      readonly v: 1;
      readonly type: 'diff';
      readonly seq: number;
      readonly time: number;
      readonly changes: readonly SourceChange[];
      /** Only the sources whose status changed since the last frame. */
      readonly status: readonly SourceStatus[];
    };

export type CaptureTool = 'tcpdump' | 'conntrack-events';

/** A bounded capture the collector asks for when an incident opens: only addresses and ports travel, never a command. */
export interface CaptureRequest {
  readonly v: 1;
  readonly type: 'capture';
  readonly id: string;
  readonly durationMs: number;
  readonly hosts: readonly string[];
  readonly ports: readonly number[];
}

/**
 * What the collector holds of an agent run. `reply: 'hello'` answers a hello
 * that named a run: `seq` is the last seq of that run whose state the
 * collector holds (the agent sends what follows it from its journal), or null
 * when it holds none (the agent sends a snapshot). `reply: 'durable'` comes
 * after the collector's store has written frames up to `seq` (a few a second
 * at most); without a store the collector sends none.
 * Sent only to agents whose hello named a run, so agents that predate it
 * never see one.
 */
export interface Ack {
  readonly v: 1;
  readonly type: 'ack';
  readonly run: string;
  readonly seq: number | null;
  /** The agent's sample time of step `seq` (null with it): lets the agent say how many seconds a gap lost. */
  readonly time: number | null;
  readonly reply: 'hello' | 'durable';
}

export type CollectorMessage = { readonly v: 1; readonly type: 'resync'; readonly reason: string } | CaptureRequest | Ack;

export const MAX_CAPTURE_MS = 120_000;
export const MAX_PCAP_BYTES = 8 * 1024 * 1024;

export type AgentMessageType = AgentMessage['type'];

const intervalMs: Schema<number> = {
  describe: 'sample interval',
  decode: (v, p) => (typeof v === 'number' && Number.isFinite(v) && v >= 10 && v <= 3_600_000 ? { ok: true, value: v } : { ok: false, error: `${p || '<root>'}: expected a sample interval of 10 ms to 1 h` }),
};
const hello = object({ v: literal(1), type: literal('hello'), node: nodeName, agentVersion: boundedStr(128), intervalMs, startedAt: time });
const facts = object({ v: literal(1), type: literal('facts'), facts: nodeFacts });
const snapshotHead = object({ v: literal(1), type: literal('snapshot'), seq: seqNumber, time, source: boundedStr(64), part: int, parts: int });
const snapshotEnd = object({ v: literal(1), type: literal('snapshot-end'), seq: seqNumber, time, status: array(sourceStatus, 64) });
const diffHead = object({ v: literal(1), type: literal('diff'), seq: seqNumber, time, status: array(sourceStatus, 64) });
const resync = object({ v: literal(1), type: literal('resync'), reason: boundedStr(4096) });
const runId: Schema<string> = {
  describe: 'agent run id',
  decode: (v, p) => (isRunId(v) ? { ok: true, value: v } : { ok: false, error: `${p || '<root>'}: expected an agent run id ([A-Za-z0-9._-]{1,64})` }),
};
const ack = object({ v: literal(1), type: literal('ack'), run: runId, seq: nullable(seqNumber), time: nullable(time), reply: literal('hello', 'durable') });
const captureRequest = object({ v: literal(1), type: literal('capture'), id: str, durationMs: int, hosts: array(boundedStr(64), 16), ports: array(int, 16) });
const captureTool = literal('tcpdump', 'conntrack-events');
const captureLines = object({ v: literal(1), type: literal('capture-lines'), id: captureId, tool: captureTool, lines: array(boundedStr(64 * 1024), 10_000) });
const capturePcap = object({ v: literal(1), type: literal('capture-pcap'), id: captureId, base64: boundedStr(Math.ceil(MAX_PCAP_BYTES / 3) * 4) });
const captureEnd = object({ v: literal(1), type: literal('capture-end'), id: captureId, tool: captureTool, error: nullable(boundedStr(4096)) });

export type DecodeResult<T> = { readonly ok: true; readonly msg: T } | { readonly ok: false; readonly error: string };

const fromDecoded = <T>(d: Decoded<T>): DecodeResult<T> => (d.ok ? { ok: true, msg: d.value } : { ok: false, error: d.error });

function decodeRecords(source: SourceName, input: unknown, path: string): Decoded<readonly RecordOf<SourceName>[]> {
  return array(sources[source].schema as { describe: string; decode(v: unknown, p: string): Decoded<RecordOf<SourceName>> }).decode(input, path);
}

function decodeChange(input: unknown, path: string): Decoded<SourceChange> {
  if (typeof input !== 'object' || input === null) return { ok: false, error: `${path}: expected object` };
  const o = input as Record<string, unknown>;
  if (!isSourceName(o.source)) return { ok: false, error: `${path}.source: unknown source ${JSON.stringify(o.source)}` };
  const source = o.source;
  const added = decodeRecords(source, o.added, `${path}.added`);
  if (!added.ok) return added;
  const changed = decodeRecords(source, o.changed, `${path}.changed`);
  if (!changed.ok) return changed;
  const refreshed = decodeRecords(source, o.refreshed, `${path}.refreshed`);
  if (!refreshed.ok) return refreshed;
  const removed = array(str).decode(o.removed, `${path}.removed`);
  if (!removed.ok) return removed;
  return { ok: true, value: { source, added: added.value, changed: changed.value, refreshed: refreshed.value, removed: removed.value } };
}

/** Decodes one frame from an agent. Never throws. */
export function decodeAgentMessage(text: string): DecodeResult<AgentMessage> {
  let input: unknown;
  try {
    input = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: `not JSON: ${(err as Error).message}` };
  }
  if (typeof input !== 'object' || input === null || Array.isArray(input)) return { ok: false, error: 'frame is not a JSON object' };
  const o = input as Record<string, unknown>;
  if (o.v !== PROTOCOL_VERSION) return { ok: false, error: `unsupported protocol version ${JSON.stringify(o.v)} (this collector speaks v${PROTOCOL_VERSION})` };
  switch (o.type) {
    case 'hello': {
      const d = hello.decode(o, '');
      if (!d.ok || o.run === undefined) return fromDecoded(d);
      const run = runId.decode(o.run, 'run');
      if (!run.ok) return fromDecoded(run);
      return { ok: true, msg: { ...d.value, run: run.value } };
    }
    case 'facts':
      return fromDecoded(facts.decode(o, ''));
    case 'snapshot-end':
      return fromDecoded(snapshotEnd.decode(o, ''));
    case 'capture-lines':
      return fromDecoded(captureLines.decode(o, ''));
    case 'capture-end':
      return fromDecoded(captureEnd.decode(o, ''));
    case 'capture-pcap': {
      const d = capturePcap.decode(o, '');
      if (d.ok && (d.value.base64.length > (MAX_PCAP_BYTES * 4) / 3 + 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(d.value.base64))) return { ok: false, error: 'capture-pcap: not base64, or larger than the pcap bound' };
      return fromDecoded(d);
    }
    case 'snapshot': {
      const head = snapshotHead.decode(o, '');
      if (!head.ok) return fromDecoded(head);
      const source = head.value.source;
      if (!isSourceName(source)) return { ok: false, error: `source: unknown source ${JSON.stringify(source)}` };
      if (head.value.parts < 1 || head.value.parts > MAX_SNAPSHOT_PARTS) return { ok: false, error: `parts: expected 1..${MAX_SNAPSHOT_PARTS}, got ${head.value.parts}` };
      if (head.value.part < 0 || head.value.part >= head.value.parts) return { ok: false, error: `part ${head.value.part} out of ${head.value.parts}` };
      if (!Array.isArray(o.records) || o.records.length > SNAPSHOT_CHUNK) return { ok: false, error: `records: expected an array of at most ${SNAPSHOT_CHUNK}` };
      const records = decodeRecords(source, o.records, 'records');
      if (!records.ok) return fromDecoded(records);
      return { ok: true, msg: { ...head.value, source, records: records.value } };
    }
    case 'diff': {
      const head = diffHead.decode(o, '');
      if (!head.ok) return fromDecoded(head);
      // One change per source at most; anything longer is not from an agent.
      if (!Array.isArray(o.changes) || o.changes.length > 64) return { ok: false, error: 'changes: expected an array of at most 64 source changes' };
      const changes: SourceChange[] = [];
      for (let i = 0; i < o.changes.length; i++) {
        const c = decodeChange(o.changes[i], `changes[${i}]`);
        if (!c.ok) return fromDecoded(c);
        changes.push(c.value);
      }
      return { ok: true, msg: { ...head.value, changes } };
    }
    default:
      return { ok: false, error: `unknown message type ${JSON.stringify(o.type)}` };
  }
}

export function decodeCollectorMessage(text: string): DecodeResult<CollectorMessage> {
  let input: unknown;
  try {
    input = JSON.parse(text);
  } catch (err) {
    return { ok: false, error: `not JSON: ${(err as Error).message}` };
  }
  if (typeof input === 'object' && input !== null && (input as { type?: unknown }).type === 'capture') {
    const d = captureRequest.decode(input, '');
    if (!d.ok) return fromDecoded(d);
    // The agent builds tcpdump's filter from these: they must be addresses and ports, nothing else.
    const m = d.value;
    if (!/^[A-Za-z0-9._-]{1,80}$/.test(m.id)) return { ok: false, error: 'capture id: expected [A-Za-z0-9._-]{1,80}' };
    if (m.durationMs < 1 || m.durationMs > MAX_CAPTURE_MS) return { ok: false, error: `capture durationMs: expected 1..${MAX_CAPTURE_MS}` };
    const hosts: string[] = [];
    for (const h of m.hosts) {
      const c = canonicalIp(h);
      if (c === null) return { ok: false, error: `capture hosts: ${JSON.stringify(h)} is not an IP address` };
      hosts.push(c);
    }
    if (m.ports.some((p) => p < 1 || p > 65535)) return { ok: false, error: 'capture ports: expected 1..65535' };
    return { ok: true, msg: { ...m, hosts } };
  }
  if (typeof input === 'object' && input !== null && (input as { type?: unknown }).type === 'ack') return fromDecoded(ack.decode(input, ''));
  return fromDecoded(resync.decode(input, ''));
}

export const encode = (msg: AgentMessage | CollectorMessage): string => JSON.stringify(msg);

export type { Problem };
