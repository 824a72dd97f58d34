// The agent ends a connection whose collector went silent (half-open: no
// FIN ever came) so its reconnect loop runs; a collector that answers pings
// keeps the connection however quiet the stream is.
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket, { WebSocketServer } from 'ws';
import { jittered, watchLiveness } from '../../agent/liveness.ts';

const servers: WebSocketServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) {
    for (const c of s.clients) c.terminate();
    await new Promise<void>((r) => s.close(() => r()));
  }
});

async function server(autoPong: boolean): Promise<number> {
  const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', autoPong });
  servers.push(wss);
  await new Promise<void>((r) => wss.once('listening', () => r()));
  return (wss.address() as AddressInfo).port;
}

function connect(port: number, pingMs: number, deadMs: number): Promise<{ dead: number | null; closedAfterMs: number }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`);
    const started = Date.now();
    let dead: number | null = null;
    const stop = watchLiveness(ws, (silent) => (dead = silent), pingMs, deadMs);
    const guard = setTimeout(() => {
      stop();
      ws.terminate();
    }, deadMs * 4);
    ws.on('close', () => {
      clearTimeout(guard);
      stop();
      resolve({ dead, closedAfterMs: Date.now() - started });
    });
  });
}

describe('agent liveness', () => {
  it('terminates a connection whose peer stopped answering pings, within the limit plus one ping', async () => {
    const port = await server(false);
    const r = await connect(port, 100, 400);
    expect(r.dead).not.toBeNull();
    expect(r.dead ?? 0).toBeGreaterThanOrEqual(400);
    expect(r.closedAfterMs).toBeLessThan(400 + 100 + 1_000);
  });

  it('keeps a quiet connection whose peer answers pings', async () => {
    const port = await server(true);
    const r = await connect(port, 100, 400);
    // The guard (4× the limit) ended it, not liveness.
    expect(r.dead).toBeNull();
    expect(r.closedAfterMs).toBeGreaterThanOrEqual(1_600);
  });

  it.each([0, 0.25, 0.999])('spreads reconnects over half to all of the backoff (random %s)', (x) => {
    const d = jittered(10_000, () => x);
    expect(d).toBeGreaterThanOrEqual(5_000);
    expect(d).toBeLessThanOrEqual(10_000);
  });
});
