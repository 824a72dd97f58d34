// What the agents captured for incidents (tcpdump and conntrack -E lines, the
// pcap), owned by the incidents stage: only captures it asked for are kept,
// each bounded in lines and bytes, and the set of captures is pruned with the
// history window so a long-running collector does not keep every one.
import type { AgentMessage, CaptureTool } from '../../contract/protocol.ts';
import type { Bounds } from '../state/bounds.ts';

/** Lines kept per capture, node and tool. */
export const MAX_CAPTURE_LINES = 50_000;
/** Captures kept at once; the oldest goes first. */
export const MAX_CAPTURES = 64;

export interface CaptureOutput {
  readonly lines: string[];
  ended: boolean;
  error: string | null;
}

type CaptureMessage = Extract<AgentMessage, { type: 'capture-lines' | 'capture-end' | 'capture-pcap' }>;

interface Capture {
  readonly startedAt: number;
  readonly byNode: Map<string, Map<CaptureTool, CaptureOutput>>;
  readonly pcaps: Map<string, Buffer>;
}

export type CaptureOutcome = { readonly kept: true; readonly note: string | null } | { readonly kept: false; readonly reason: string };

export class Captures {
  readonly #captures = new Map<string, Capture>();
  readonly #windowMs: number;
  readonly #bounds: Bounds | null;

  constructor(windowMs: number, bounds: Bounds | null = null) {
    this.#windowMs = windowMs;
    this.#bounds = bounds;
  }

  /** Opens a capture for `id`: from now on its output is kept. */
  open(id: string, now: number): void {
    this.prune(now);
    while (this.#captures.size >= MAX_CAPTURES) {
      const oldest = this.#captures.keys().next().value;
      if (oldest === undefined) break;
      this.#captures.delete(oldest);
      this.#bounds?.hit('captures', 'collector', MAX_CAPTURES, 'the oldest capture was dropped to make room');
    }
    this.#captures.set(id, { startedAt: now, byNode: new Map(), pcaps: new Map() });
  }

  /** Takes one capture frame from `node`; output nobody asked for is refused. */
  take(node: string, msg: CaptureMessage): CaptureOutcome {
    const c = this.#captures.get(msg.id);
    if (c === undefined) return { kept: false, reason: 'capture output nobody asked for' };
    if (msg.type === 'capture-pcap') {
      const pcap = Buffer.from(msg.base64, 'base64');
      c.pcaps.set(node, pcap);
      return { kept: true, note: `pcap of ${pcap.length} bytes` };
    }
    let byTool = c.byNode.get(node);
    if (byTool === undefined) c.byNode.set(node, (byTool = new Map()));
    let out = byTool.get(msg.tool);
    if (out === undefined) byTool.set(msg.tool, (out = { lines: [], ended: false, error: null }));
    if (msg.type === 'capture-lines') {
      const room = MAX_CAPTURE_LINES - out.lines.length;
      for (const l of msg.lines.slice(0, Math.max(0, room))) out.lines.push(l);
      if (msg.lines.length > room) this.#bounds?.hit('capture.lines', node, MAX_CAPTURE_LINES, 'further capture lines were dropped');
      return { kept: true, note: null };
    }
    out.ended = true;
    out.error = msg.error;
    return { kept: true, note: `finished with ${out.lines.length} lines${msg.error === null ? '' : `, error: ${msg.error}`}` };
  }

  /** Capture output of one incident, by node and tool, and its pcaps by node. */
  of(id: string): { readonly lines: ReadonlyMap<string, ReadonlyMap<CaptureTool, CaptureOutput>>; readonly pcaps: ReadonlyMap<string, Buffer> } {
    const c = this.#captures.get(id);
    return { lines: c?.byNode ?? new Map(), pcaps: c?.pcaps ?? new Map() };
  }

  /** Drops captures older than the history window. */
  prune(now: number): void {
    for (const [id, c] of this.#captures) if (now - c.startedAt > this.#windowMs) this.#captures.delete(id);
  }

  get size(): number {
    return this.#captures.size;
  }
}
