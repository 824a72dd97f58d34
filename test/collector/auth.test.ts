// The collector's door: agents and API clients without the bearer token, or
// with a wrong one, are refused, logged (never with the token they sent) and
// given nothing; /healthz alone is open.
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Agent } from '../../agent/agent.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { BundleService } from '../../collector/incidents/bundle-service.ts';
import { Collector } from '../../collector/receive/collector.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import { SUBPROTOCOL } from '../../contract/protocol.ts';
import { captureLog, waitFor } from '../helpers/capture-log.ts';

const TOKEN = 'correct-horse-battery-staple';
const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function collector() {
  const log = captureLog();
  const c = new Collector({ log: log.log });
  const server = new CollectorServer({ collector: c, log: log.log, token: TOKEN, bundles: new BundleService(c, log.log, { version: 'test' }) });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  if (typeof addr === 'string') throw new Error('tcp expected');
  cleanups.push(() => server.close());
  return { log, collector: c, port: addr.port };
}

describe('collector authentication', { timeout: 20_000 }, () => {
  it('refuses an agent with no token, logs why, and the agent keeps retrying without crashing', async () => {
    const c = await collector();
    const agentLog = captureLog();
    const agent = new Agent({
      node: 'node-x',
      collectorUrl: `ws://127.0.0.1:${c.port}`,
      intervalMs: 100,
      token: null,
      version: 'test',
      state: new NodeState(createSamplers(), createRecordedIO(() => new Map([['/proc/net/nf_conntrack', '']]))),
      log: agentLog.log,
      readFacts: () => Promise.resolve({ hostname: 'x', kernel: '6.1', os: 'test', arch: 'x64', cpus: 1, memoryBytes: 1, interfaces: [] }),
    });
    agent.start();
    cleanups.push(() => agent.stop());
    await waitFor('two refusals', () => c.log.lines.filter((l) => l.msg === 'refused an agent connection').length >= 2, 10_000);
    expect(c.log.find('refused an agent connection')).toMatchObject({ reason: 'no token' });
    expect(agentLog.find(/collector requires a token and this agent has none/)).toMatchObject({ status: 401 });
    expect(c.collector.nodes.size).toBe(0);
  });

  it.each([
    ['no token', undefined, 'no token'],
    ['a wrong token', 'Bearer guess', 'wrong token'],
    ['a token without the Bearer scheme', TOKEN, 'wrong token'],
  ])('answers a WebSocket upgrade with %s with 401 and sends no message at all', async (_what, authorization, reason) => {
    const c = await collector();
    const ws = new WebSocket(`ws://127.0.0.1:${c.port}`, [SUBPROTOCOL], authorization === undefined ? {} : { headers: { authorization } });
    const messages: unknown[] = [];
    ws.on('message', (m) => messages.push(m));
    const status = await new Promise<number | undefined>((resolve) => {
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode));
      ws.on('open', () => resolve(200));
      ws.on('error', () => undefined);
    });
    ws.terminate();
    expect(status).toBe(401);
    expect(messages).toEqual([]);
    const refusal = c.log.find('refused an agent connection');
    expect(refusal).toMatchObject({ reason });
    expect(JSON.stringify(c.log.lines)).not.toContain('guess');
    expect(JSON.stringify(c.log.lines)).not.toContain(TOKEN);
  });

  const paths = ['/api/nodes', '/api/nodes/node-a/conntrack', '/api/incidents', '/api/incidents/inc-1', '/api/incidents/inc-1/bundle', '/api/bundle?since=10m'];
  it.each(paths)('%s: 401 and no data without a token or with a wrong one; the refusal is logged without the token', async (path) => {
    const c = await collector();
    for (const headers of [{}, { authorization: 'Bearer not-it' }]) {
      const res = await fetch(`http://127.0.0.1:${c.port}${path}`, { headers });
      expect(res.status).toBe(401);
      expect(await res.json()).toEqual({ error: 'unauthorized' });
    }
    const refusals = c.log.lines.filter((l) => l.msg === 'refused an API request without a valid token');
    expect(refusals.map((r) => r.reason)).toEqual(['no token', 'wrong token']);
    // The route is logged with the client's own words (node names, ids) masked: nothing a client sends becomes log content.
    expect(refusals[0]).toMatchObject({ route: (path.split('?')[0] ?? '').replace('node-a', ':x').replace('inc-1', ':x'), remote: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
    expect(JSON.stringify(c.log.lines)).not.toContain('not-it');
    // With the token the same path is served (or says what is missing), so the 401 was the token's doing.
    const ok = await fetch(`http://127.0.0.1:${c.port}${path}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    expect(ok.status).not.toBe(401);
  });

  it('accepts the bearer scheme in any case (RFC 7235), and nothing else', async () => {
    const c = await collector();
    for (const scheme of ['bearer', 'BEARER', 'Bearer']) {
      const res = await fetch(`http://127.0.0.1:${c.port}/api/nodes`, { headers: { authorization: `${scheme} ${TOKEN}` } });
      expect(res.status, scheme).toBe(200);
    }
    const basic = await fetch(`http://127.0.0.1:${c.port}/api/nodes`, { headers: { authorization: `Basic ${TOKEN}` } });
    expect(basic.status).toBe(401);
  });

  it('never logs a token put in a query string, on the API or on an agent upgrade', async () => {
    const c = await collector();
    const res = await fetch(`http://127.0.0.1:${c.port}/api/nodes?token=${TOKEN}-in-query`);
    expect(res.status).toBe(401);
    const ws = new WebSocket(`ws://127.0.0.1:${c.port}/?access_token=${TOKEN}-in-upgrade`, SUBPROTOCOL);
    await new Promise<void>((resolve) => {
      ws.on('error', () => resolve());
      ws.on('close', () => resolve());
    });
    expect(c.log.find('refused an agent connection')).toMatchObject({ reason: 'no token' });
    expect(JSON.stringify(c.log.lines)).not.toContain('-in-query');
    expect(JSON.stringify(c.log.lines)).not.toContain('-in-upgrade');
  });

  it('answers /healthz without a token', async () => {
    const c = await collector();
    const res = await fetch(`http://127.0.0.1:${c.port}/healthz`);
    expect(res.status).toBe(200);
  });
});
