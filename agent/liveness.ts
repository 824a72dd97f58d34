// The agent's half of connection liveness. A collector that vanished without
// a FIN (node rebooted, conntrack entry on a middlebox expired) leaves a
// socket that looks open forever; diffs would queue into it. The agent pings
// and, when nothing (frame or pong) has come back for DEAD_MS, ends the socket
// so the reconnect loop runs. The collector does the same on its side.
import type WebSocket from 'ws';

export const PING_MS = 10_000;
export const DEAD_MS = 30_000;

/** Starts pinging `ws`; returns a stop function. `onDead` runs once, just before the socket is terminated. */
export function watchLiveness(ws: WebSocket, onDead: (silentMs: number) => void, pingMs = PING_MS, deadMs = DEAD_MS): () => void {
  let heardAt = Date.now();
  const heard = () => {
    heardAt = Date.now();
  };
  ws.on('pong', heard);
  ws.on('message', heard);
  ws.on('open', heard);
  const timer = setInterval(() => {
    if (ws.readyState !== ws.OPEN) return;
    const silent = Date.now() - heardAt;
    if (silent >= deadMs) {
      clearInterval(timer);
      onDead(silent);
      ws.terminate();
      return;
    }
    ws.ping();
  }, pingMs);
  timer.unref();
  return () => clearInterval(timer);
}

/**
 * A reconnect delay between half and all of `backoffMs`: after a collector
 * restart, a DaemonSet's agents spread their reconnects (each with a snapshot)
 * over the interval instead of arriving in one instant.
 */
export function jittered(backoffMs: number, random: () => number = Math.random): number {
  return Math.round(backoffMs * (0.5 + random() / 2));
}
