// The agent's probes for the kubelet: /livez fails when the sampling loop
// has stopped ticking (restart me), /readyz when the collector does not have
// this node's state (not connected, or the snapshot has not gone out yet).
// Plain HTTP with nothing but these two answers and, when given, /metrics
// (./metrics.ts: counts and timings, no node data).
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface AgentHealth {
  readonly lastTickAt: number | null;
  readonly connected: boolean;
  readonly streaming: boolean;
  readonly intervalMs: number;
}

/** Missed ticks before /livez fails: one slow `conntrack -L` on a huge table must not get the pod killed. */
export const LIVENESS_MISSED_TICKS = 10;

export function livez(h: AgentHealth, now: number, startedAt: number): { ok: boolean; reason: string } {
  const limit = Math.max(LIVENESS_MISSED_TICKS * h.intervalMs, 30_000);
  const since = h.lastTickAt ?? startedAt;
  if (now - since > limit) return { ok: false, reason: h.lastTickAt === null ? `no sample completed in ${now - startedAt} ms since start` : `last sample completed ${now - since} ms ago (limit ${limit} ms)` };
  return { ok: true, reason: h.lastTickAt === null ? 'starting' : 'sampling' };
}

export function readyz(h: AgentHealth): { ok: boolean; reason: string } {
  if (!h.connected) return { ok: false, reason: 'not connected to the collector' };
  if (!h.streaming) return { ok: false, reason: 'connected; snapshot not sent yet' };
  return { ok: true, reason: 'streaming to the collector' };
}

export interface HealthServerOptions {
  readonly now?: () => number;
  /** Prometheus metrics at /metrics (AgentMetrics). */
  readonly metrics?: { render(): Promise<{ readonly contentType: string; readonly body: string }> };
}

export async function startHealthServer(health: () => AgentHealth, listen: { host: string; port: number }, options: HealthServerOptions = {}): Promise<{ address: AddressInfo; close(): Promise<void> }> {
  const now = options.now ?? Date.now;
  const metrics = options.metrics;
  const startedAt = now();
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/metrics' && metrics !== undefined) {
      metrics.render().then(
        ({ contentType, body }) => void res.writeHead(200, { 'content-type': contentType }).end(body),
        (err: unknown) => void res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `metrics: ${err instanceof Error ? err.message : String(err)}` })),
      );
      return;
    }
    const verdict = path === '/livez' ? livez(health(), now(), startedAt) : path === '/readyz' ? readyz(health()) : null;
    if (verdict === null) {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}');
      return;
    }
    res.writeHead(verdict.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(verdict));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => resolve());
  });
  return {
    address: server.address() as AddressInfo,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
