// The agent's kubelet probes, over real HTTP, around a real agent and a real
// collector: not ready before the snapshot has gone out, ready while
// streaming, not ready again when the collector goes away; live while the
// sampling loop ticks.
import { afterEach, describe, expect, it } from 'vitest';
import { Agent } from '../../agent/agent.ts';
import { livez, readyz, startHealthServer } from '../../agent/health.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { Collector } from '../../collector/receive/collector.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

const get = async (port: number, path: string) => {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: (await res.json()) as { ok: boolean; reason: string } };
};

describe('agent health endpoints', { timeout: 20_000 }, () => {
  it('/readyz follows the collector connection; /livez follows the sampling loop', async () => {
    // A port nobody listens on yet: the agent starts disconnected.
    const probe = new CollectorServer({ collector: new Collector({ log: captureLog().log }), log: captureLog().log, token: 't' });
    const addr = await probe.listen({ host: '127.0.0.1', port: 0 });
    if (typeof addr === 'string') throw new Error('tcp expected');
    await probe.close();

    const agent = new Agent({
      node: 'node-a',
      collectorUrl: `ws://127.0.0.1:${addr.port}`,
      intervalMs: 100,
      token: 't',
      version: 'test',
      state: new NodeState(createSamplers(), createRecordedIO(() => new Map([['/proc/net/nf_conntrack', '']]))),
      log: captureLog().log,
      readFacts: () => Promise.resolve({ hostname: 'a', kernel: '6.1', os: 'test', arch: 'x64', cpus: 1, memoryBytes: 1, interfaces: [] }),
    });
    agent.start();
    cleanups.push(() => agent.stop());
    const health = await startHealthServer(() => agent.health(), { host: '127.0.0.1', port: 0 });
    cleanups.push(() => health.close());
    const port = health.address.port;

    await waitFor('a first tick', () => agent.health().lastTickAt !== null);
    expect(await get(port, '/livez')).toEqual({ status: 200, body: { ok: true, reason: 'sampling' } });
    expect(await get(port, '/readyz')).toEqual({ status: 503, body: { ok: false, reason: 'not connected to the collector' } });

    const collector = new CollectorServer({ collector: new Collector({ log: captureLog().log }), log: captureLog().log, token: 't' });
    await collector.listen({ host: '127.0.0.1', port: addr.port });
    await waitFor('ready once the snapshot is sent', async () => (await get(port, '/readyz')).status === 200, 10_000);
    expect((await get(port, '/readyz')).body.reason).toBe('streaming to the collector');

    await collector.close();
    await waitFor('not ready after the collector left', async () => (await get(port, '/readyz')).status === 503, 10_000);
    expect((await get(port, '/livez')).status).toBe(200);
    expect((await get(port, '/nodes')).status).toBe(404);
  });

  it('/livez fails once sampling has stalled for ten intervals (at least 30 s), and says since when', () => {
    const h = { connected: true, streaming: true, intervalMs: 1_000 };
    expect(livez({ ...h, lastTickAt: 100_000 }, 129_000, 0)).toEqual({ ok: true, reason: 'sampling' });
    expect(livez({ ...h, lastTickAt: 100_000 }, 131_000, 0)).toEqual({ ok: false, reason: 'last sample completed 31000 ms ago (limit 30000 ms)' });
    expect(livez({ ...h, lastTickAt: null }, 31_000, 0)).toEqual({ ok: false, reason: 'no sample completed in 31000 ms since start' });
    expect(livez({ ...h, intervalMs: 5_000, lastTickAt: 100_000 }, 140_000, 0).ok).toBe(true);
    expect(readyz({ ...h, lastTickAt: 1, streaming: false })).toEqual({ ok: false, reason: 'connected; snapshot not sent yet' });
  });
});
