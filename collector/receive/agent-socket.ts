// One agent's WebSocket: frames in to the collector core, liveness out. A
// connection must say hello within HELLO_TIMEOUT_MS, and one silent (no
// frame, no pong) for LIVENESS_MS is cut, half-open or not: the session
// registry in the core then lets the node's next connection in.
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { encode } from '../../contract/protocol.ts';
import { CLOSE, type Collector, type Session } from './collector.ts';

/** An agent that has not said hello by then is not an agent. */
export const HELLO_TIMEOUT_MS = 10_000;
/** Pings go out this often; a connection silent (no frame, no pong) for LIVENESS_MS is dead, half-open or not. */
export const PING_INTERVAL_MS = 10_000;
export const LIVENESS_MS = 30_000;

export interface AgentSocketOptions {
  readonly pingIntervalMs?: number;
  readonly livenessMs?: number;
  readonly helloTimeoutMs?: number;
  /** The node the connection's credentials were issued for, when they say. */
  readonly boundNode?: string | null;
}

export function serveAgent(ws: WebSocket, remote: string, collector: Collector, log: Logger, options: AgentSocketOptions = {}): Session {
  const liveness = options.livenessMs ?? LIVENESS_MS;
  let heardAt = Date.now();
  const session: Session = {
    node: null,
    remote,
    boundNode: options.boundNode ?? null,
    send: (msg) => {
      if (ws.readyState === ws.OPEN) ws.send(encode(msg));
    },
    close: (code, reason) => {
      if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(code, reason);
      // A dead peer never completes the closing handshake.
      setTimeout(() => ws.terminate(), 2_000).unref();
    },
    alive: () => ws.readyState === ws.OPEN && Date.now() - heardAt < liveness,
  };
  const helloTimer = setTimeout(() => {
    if (session.node !== null) return;
    log.warn({ remote }, 'closed an agent connection that sent no hello');
    session.close?.(CLOSE.noHello, 'no hello');
  }, options.helloTimeoutMs ?? HELLO_TIMEOUT_MS);
  helloTimer.unref();
  const pinger = setInterval(() => {
    if (Date.now() - heardAt >= liveness) {
      log.warn({ remote, node: session.node, silentMs: Date.now() - heardAt }, 'agent connection silent past the liveness limit; closing it');
      ws.terminate();
      return;
    }
    if (ws.readyState === ws.OPEN) ws.ping();
  }, options.pingIntervalMs ?? PING_INTERVAL_MS);
  pinger.unref();
  ws.on('pong', () => {
    heardAt = Date.now();
  });
  ws.on('message', (data, isBinary) => {
    heardAt = Date.now();
    if (isBinary) {
      collector.reject(session, 'binary', {});
      return;
    }
    const text = (Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? Buffer.from(data) : data).toString();
    collector.receive(session, text);
  });
  ws.on('error', (err) => log.warn({ remote, node: session.node, err: err.message }, 'agent socket error'));
  ws.on('close', (code) => {
    clearTimeout(helloTimer);
    clearInterval(pinger);
    collector.disconnect(session, code);
  });
  return session;
}
