// Node identity an agent cannot forge: the collector reviews the agent's
// projected ServiceAccount token with the (in-process) Kubernetes API and
// lets the connection speak only for the node of the token's pod. A token
// copied off node-a cannot say hello as node-b; tokens the API does not vouch
// for get 401; an API that cannot be asked gets 503, logged once; the shared
// token still serves runs without a cluster. In-test agents over real
// sockets, then the real CLI processes.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { Agent } from '../../agent/agent.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { CollectorServer } from '../../collector/api/server.ts';
import { Collector } from '../../collector/receive/collector.ts';
import { decodeTokenReview, jwtExpiry, kubeReviewBackend, TokenReviewer, type AgentAuthMode } from '../../collector/receive/token-review.ts';
import { encode, SUBPROTOCOL } from '../../contract/protocol.ts';
import { captureLog, collectJsonLines, waitFor, type CapturedLog } from '../helpers/capture-log.ts';
import { API_AUDIENCE, KubeApiServer } from '../helpers/kube-api-server.ts';

const SHARED = 'shared-secret-for-people';
const NS = 'conntrail';
const root = new URL('../..', import.meta.url).pathname;
const cli = join(root, 'bin/conntrail.js');

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-tokenreview-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** The API server with the agent DaemonSet's pods on node-a and node-b, and a pod of another ServiceAccount. */
async function apiServer(): Promise<{ api: KubeApiServer; kubeconfig: string }> {
  const api = new KubeApiServer();
  await api.listen();
  cleanups.push(() => api.close());
  api.addPod(NS, 'conntrail-agent-aaaaa', 'node-a', 'conntrail-agent');
  api.addPod(NS, 'conntrail-agent-bbbbb', 'node-b', 'conntrail-agent');
  api.addPod(NS, 'debug-shell', 'node-a', 'default');
  return { api, kubeconfig: api.writeKubeconfig(tempDir()) };
}

async function collector(opts: { mode: AgentAuthMode; kubeconfig?: string; timeoutMs?: number; token?: string | null }) {
  const log = captureLog();
  const c = new Collector({ log: log.log });
  let reviewer: TokenReviewer | null = null;
  if (opts.kubeconfig !== undefined) {
    const api = await kubeReviewBackend({ kubeconfig: opts.kubeconfig });
    if (api === null) throw new Error('no kubeconfig');
    reviewer = new TokenReviewer({ backend: api.backend, log: log.log, serviceAccount: { namespace: NS, name: 'conntrail-agent' }, ...(opts.timeoutMs === undefined ? {} : { timeoutMs: opts.timeoutMs }) });
  }
  const server = new CollectorServer({ collector: c, log: log.log, token: opts.token === undefined ? SHARED : opts.token, agentAuth: opts.mode, reviewer });
  const addr = await server.listen({ host: '127.0.0.1', port: 0 });
  if (typeof addr === 'string') throw new Error('tcp expected');
  cleanups.push(() => server.close());
  return { log, collector: c, port: addr.port, reviewer };
}

function agent(port: number, node: string, token: string | null | (() => string | null)): { agent: Agent; log: CapturedLog } {
  const log = captureLog();
  const a = new Agent({
    node,
    collectorUrl: `ws://127.0.0.1:${port}`,
    intervalMs: 100,
    token,
    version: 'test',
    state: new NodeState(createSamplers(), createRecordedIO(() => new Map([['/proc/net/nf_conntrack', 'ipv4     2 tcp      6 431999 ESTABLISHED src=10.0.0.1 dst=10.96.0.10 sport=40000 dport=80 src=10.244.1.5 dst=10.0.0.1 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2\n']]))),
    log: log.log,
    readFacts: () => Promise.resolve({ hostname: node, kernel: '6.1', os: 'test', arch: 'x64', cpus: 1, memoryBytes: 1, interfaces: [] }),
  });
  a.start();
  cleanups.push(() => a.stop());
  return { agent: a, log };
}

/** Opens an upgrade with `token` and says hello as `node`: the HTTP status if refused, else the close code the collector ended it with. */
function helloAs(port: number, node: string, token: string | null): Promise<{ status: number; closeCode: number | null; body: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}`, SUBPROTOCOL, token === null ? {} : { headers: { authorization: `Bearer ${token}` } });
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => {
        ws.terminate();
        resolve({ status: res.statusCode ?? 0, closeCode: null, body });
      });
    });
    ws.on('open', () => ws.send(encode({ v: 1, type: 'hello', node, agentVersion: 'test', intervalMs: 1000, startedAt: Date.now() })));
    ws.on('close', (code) => resolve({ status: 101, closeCode: code, body: '' }));
    ws.on('error', () => undefined);
  });
}

async function nodesApi(port: number): Promise<{ nodes: { node: string; connected: boolean }[]; collector: { rejectedFrames: Record<string, number> } }> {
  const res = await fetch(`http://127.0.0.1:${port}/api/nodes`, { headers: { authorization: `Bearer ${SHARED}` } });
  return (await res.json()) as { nodes: { node: string; connected: boolean }[]; collector: { rejectedFrames: Record<string, number> } };
}

const reviews = (api: KubeApiServer) => api.requests.filter((r) => r.path === '/apis/authentication.k8s.io/v1/tokenreviews').length;

describe('agent identity from a TokenReview', { timeout: 30_000 }, () => {
  it("streams as the node of the token's pod, and a copy of that token cannot say hello as another node", async () => {
    const { api, kubeconfig } = await apiServer();
    const c = await collector({ mode: 'tokenreview', kubeconfig });
    const tokenA = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });

    agent(c.port, 'node-a', tokenA);
    await waitFor('node-a streaming', () => c.log.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'node-a'), 10_000);
    expect(c.collector.nodes.get('node-a')?.recordMap('conntrack').size).toBe(1);

    // The stolen token: node-a's token presented by something claiming node-b.
    const stolen = await helloAs(c.port, 'node-b', tokenA);
    expect(stolen).toMatchObject({ status: 101, closeCode: 4403 });
    const thief = agent(c.port, 'node-b', tokenA);
    await waitFor('the thief closed with 4403', () => thief.log.lines.find((l) => l.msg === 'collector connection closed; reconnecting' && l.code === 4403), 10_000);
    const nodes = await nodesApi(c.port);
    expect(nodes.nodes.map((n) => n.node)).toEqual(['node-a']);
    expect(nodes.nodes[0]?.connected).toBe(true);
    expect(nodes.collector.rejectedFrames['wrong-node']).toBeGreaterThanOrEqual(2);
    // node-a kept streaming through the attempts.
    expect(c.collector.nodes.get('node-a')?.connected).toBe(true);
    expect(JSON.stringify(c.log.lines)).not.toContain(tokenA);
  });

  it("reads the pod's node when the API server's reviews name only the pod (before 1.30), with get on the pod", async () => {
    const { api, kubeconfig } = await apiServer();
    api.podNodeInfo = false;
    const c = await collector({ mode: 'tokenreview', kubeconfig });
    const tokenB = api.issueToken({ namespace: NS, pod: 'conntrail-agent-bbbbb', audiences: ['conntrail'] });
    agent(c.port, 'node-b', tokenB);
    await waitFor('node-b streaming', () => c.log.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'node-b'), 10_000);
    expect(api.requests.some((r) => r.method === 'GET' && r.path === `/api/v1/namespaces/${NS}/pods/conntrail-agent-bbbbb` && r.status === 200)).toBe(true);
    expect(await helloAs(c.port, 'node-a', tokenB)).toMatchObject({ status: 101, closeCode: 4403 });
    expect((await nodesApi(c.port)).nodes.map((n) => n.node)).toEqual(['node-b']);
  });

  it('reuses an accepted review for the next connection instead of asking the API again', async () => {
    const { api, kubeconfig } = await apiServer();
    const c = await collector({ mode: 'tokenreview', kubeconfig });
    const tokenA = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });
    for (let i = 0; i < 3; i++) expect(await helloAs(c.port, 'node-b', tokenA)).toMatchObject({ closeCode: 4403 });
    expect(reviews(api)).toBe(1);
    expect(c.reviewer?.counts).toMatchObject({ reviews: 1, cacheHits: 2 });
  });

  const refusals: [string, (api: KubeApiServer) => string, RegExp][] = [
    ['a token the API server never issued', () => 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJmb3JnZWQifQ.c2lnbmF0dXJl', /did not authenticate the token/],
    ['an expired token', (api) => api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'], now: Date.now() - 2 * 3600_000 }), /service account token has expired/],
    ["a token for the API server's own audience (the default token)", (api) => api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: [API_AUDIENCE] }), /is invalid for the target audiences \["conntrail"\]/],
    ['a token of another ServiceAccount', (api) => api.issueToken({ namespace: NS, pod: 'debug-shell', audiences: ['conntrail'] }), /belongs to system:serviceaccount:conntrail:default, not system:serviceaccount:conntrail:conntrail-agent/],
    [
      'a token whose pod was deleted',
      (api) => {
        const t = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });
        api.delete('pods', NS, 'conntrail-agent-aaaaa');
        return t;
      },
      /pod "conntrail-agent-aaaaa" not found/,
    ],
  ];
  it.each(refusals)('refuses %s with 401 and says why, never with the token', async (_what, make, reason) => {
    const { api, kubeconfig } = await apiServer();
    const c = await collector({ mode: 'tokenreview', kubeconfig });
    const token = make(api);
    expect(await helloAs(c.port, 'node-a', token)).toEqual({ status: 401, closeCode: null, body: '' });
    expect(c.log.find('refused an agent connection')).toMatchObject({ reason: expect.stringMatching(reason) });
    expect(JSON.stringify(c.log.lines)).not.toContain(token);
    expect(c.collector.nodes.size).toBe(0);
  });

  it('answers 503 with the reason while the API cannot be asked, logs the outage once, and keeps serving', async () => {
    const { api, kubeconfig } = await apiServer();
    const c = await collector({ mode: 'tokenreview', kubeconfig, timeoutMs: 500 });
    const tokenA = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });
    await api.close();
    for (let i = 0; i < 3; i++) {
      const r = await helloAs(c.port, 'node-a', tokenA);
      expect(r.status).toBe(503);
      expect(JSON.parse(r.body)).toMatchObject({ error: 'the agent token cannot be reviewed now', reason: expect.stringMatching(/^TokenReview: .*ECONNREFUSED/) });
    }
    const outage = c.log.lines.filter((l) => String(l.msg).startsWith('cannot review agent tokens with the Kubernetes API'));
    expect(outage).toHaveLength(1);
    expect(c.log.lines.filter((l) => l.msg === 'refused an agent connection')).toEqual([]);
    expect((await fetch(`http://127.0.0.1:${c.port}/healthz`)).status).toBe(200);
    const a = agent(c.port, 'node-a', tokenA);
    await waitFor('the agent told why', () => a.log.find(/collector cannot check our token right now/), 5_000);
  });

  it('gives up on a slow API after its timeout with 503, and a forbidden TokenReview names the missing permission', async () => {
    const { api, kubeconfig } = await apiServer();
    const c = await collector({ mode: 'tokenreview', kubeconfig, timeoutMs: 300 });
    api.tokenReviewDelayMs = 600;
    const tokenA = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });
    const started = Date.now();
    const slow = await helloAs(c.port, 'node-a', tokenA);
    expect(slow.status).toBe(503);
    expect(Date.now() - started).toBeLessThan(3_000);
    expect(JSON.parse(slow.body)).toMatchObject({ reason: 'the Kubernetes API did not answer within 300 ms' });
    // Still slow: refused again, and neither the late answers nor the second attempt add a log line.
    expect((await helloAs(c.port, 'node-a', tokenA)).status).toBe(503);
    await new Promise((r) => setTimeout(r, 800));
    expect(c.log.find('the Kubernetes API answers token reviews again')).toBeUndefined();

    api.tokenReviewDelayMs = 0;
    api.forbidden.add('tokenreviews');
    const forbidden = await helloAs(c.port, 'node-a', tokenA);
    expect(forbidden.status).toBe(503);
    expect(JSON.parse(forbidden.body)).toMatchObject({ reason: expect.stringContaining("403: the collector's ServiceAccount may not create tokenreviews.authentication.k8s.io") });
    // Still one outage line: the API never answered in between.
    expect(c.log.lines.filter((l) => String(l.msg).startsWith('cannot review agent tokens'))).toHaveLength(1);

    api.forbidden.clear();
    // Reviewed again and accepted: bound to node-a, so a hello as node-b is what ends it.
    expect(await helloAs(c.port, 'node-b', tokenA)).toMatchObject({ status: 101, closeCode: 4403 });
    expect(c.log.find('the Kubernetes API answers token reviews again')).toBeDefined();
  });

  it('keeps the shared token for runs without a cluster; with tokenreview it opens the API but not the agent socket; both takes either', async () => {
    const plain = await collector({ mode: 'token' });
    agent(plain.port, 'laptop', SHARED);
    await waitFor('the shared-token agent streaming', () => plain.log.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'laptop'), 10_000);

    const { api, kubeconfig } = await apiServer();
    const strict = await collector({ mode: 'tokenreview', kubeconfig });
    expect(await helloAs(strict.port, 'node-a', SHARED)).toMatchObject({ status: 401 });
    expect(strict.log.find('refused an agent connection')).toMatchObject({ reason: expect.stringContaining('the shared token opens the HTTP API, not the agent socket') });
    expect(reviews(api)).toBe(0);
    expect((await fetch(`http://127.0.0.1:${strict.port}/api/nodes`, { headers: { authorization: `Bearer ${SHARED}` } })).status).toBe(200);

    const both = await collector({ mode: 'both', kubeconfig });
    agent(both.port, 'build-host', SHARED);
    const tokenA = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });
    agent(both.port, 'node-a', tokenA);
    await waitFor('both agents streaming', () => ['build-host', 'node-a'].every((n) => both.log.lines.some((l) => l.msg === 'snapshot applied' && l.node === n)), 10_000);
    expect(await helloAs(both.port, 'node-b', tokenA)).toMatchObject({ closeCode: 4403 });
  });

  it('the agent reads its token again at every reconnect, so a rotated token is picked up', async () => {
    const { api, kubeconfig } = await apiServer();
    const c = await collector({ mode: 'tokenreview', kubeconfig });
    let current = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'], now: Date.now() - 2 * 3600_000 });
    let reads = 0;
    agent(c.port, 'node-a', () => {
      reads++;
      return current;
    });
    await waitFor('the expired token refused', () => c.log.find('refused an agent connection'), 5_000);
    current = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });
    await waitFor('node-a streaming with the rotated token', () => c.log.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'node-a'), 10_000);
    expect(reads).toBeGreaterThanOrEqual(2);
  });
});

describe('decoding a TokenReview', () => {
  const expectUser = { user: 'system:serviceaccount:conntrail:conntrail-agent', audience: 'conntrail' };
  const ok = { status: { authenticated: true, audiences: ['conntrail'], user: { username: expectUser.user, extra: { 'authentication.kubernetes.io/node-name': ['node-a'], 'authentication.kubernetes.io/pod-name': ['p'] } } } };
  it('takes the node from the bound node, else asks for the pod; refuses every other shape with a reason', () => {
    expect(decodeTokenReview(ok, expectUser)).toEqual({ ok: true, node: 'node-a', pod: 'p' });
    const podOnly = structuredClone(ok);
    podOnly.status.user.extra = { 'authentication.kubernetes.io/pod-name': ['p'] } as typeof podOnly.status.user.extra;
    expect(decodeTokenReview(podOnly, expectUser)).toEqual({ ok: true, node: null, pod: 'p', podUid: null });
    for (const bad of [null, 'x', {}, { status: [] }, { status: { authenticated: 'true' } }, { status: { authenticated: true } }, { status: { ...ok.status, audiences: 'conntrail' } }]) expect(decodeTokenReview(bad, expectUser).ok).toBe(false);
    const twoNodes = structuredClone(ok);
    twoNodes.status.user.extra['authentication.kubernetes.io/node-name'] = ['node-a', 'node-b'];
    twoNodes.status.user.extra['authentication.kubernetes.io/pod-name'] = [];
    expect(decodeTokenReview(twoNodes, expectUser)).toMatchObject({ ok: false, reason: expect.stringContaining('not bound to a pod') });
    const badNode = structuredClone(ok);
    badNode.status.user.extra['authentication.kubernetes.io/node-name'] = ['../../etc'];
    expect(decodeTokenReview(badNode, expectUser)).toMatchObject({ ok: false, reason: expect.stringContaining('not a Kubernetes node name') });
  });

  it("reads a JWT's expiry without trusting it, and nothing from what is not one", () => {
    const payload = Buffer.from(JSON.stringify({ exp: 1_900_000_000 })).toString('base64url');
    expect(jwtExpiry(`h.${payload}.s`)).toBe(1_900_000_000_000);
    for (const t of ['', 'opaque', 'a.!!!.b', `h.${Buffer.from('[1]').toString('base64url')}.s`]) expect(jwtExpiry(t)).toBeNull();
  });
});

describe('through the CLI', { timeout: 60_000 }, () => {
  const children: ChildProcess[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) {
      if (c.exitCode !== null) continue;
      const closed = new Promise((r) => c.on('close', r));
      c.kill('SIGINT');
      // A collector watching an API takes ~28 s to exit after SIGINT (its watches wind down; not what this file tests).
      const late = setTimeout(() => c.kill('SIGKILL'), 3_000);
      await closed;
      clearTimeout(late);
    }
  });
  function start(args: string[]): { child: ChildProcess; lines: Record<string, unknown>[]; stderr: () => string } {
    const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, CONNTRAIL_TOKEN: '', KUBERNETES_SERVICE_HOST: '' } });
    children.push(child);
    const lines: Record<string, unknown>[] = [];
    collectJsonLines(child.stdout, lines);
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    return { child, lines, stderr: () => err };
  }

  it('collector --agent-auth tokenreview: a real agent streams as its pod\'s node after its token file is rewritten; another node with that token is refused', async () => {
    const { api, kubeconfig } = await apiServer();
    const dir = tempDir();
    writeFileSync(join(dir, 'shared'), `${SHARED}\n`);
    // The agent starts with an expired token, as after a long outage, and the kubelet then rewrites the file.
    writeFileSync(join(dir, 'token'), api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'], now: Date.now() - 2 * 3600_000 }));
    const collectorProc = start(['collector', '--listen', '127.0.0.1:0', '--agent-auth', 'tokenreview', '--kubeconfig', kubeconfig, '--token-file', join(dir, 'shared'), '--capture', 'off']);
    const listening = await waitFor('collector listening', () => collectorProc.lines.find((l) => l.msg === 'collector listening'), 15_000);
    expect(listening).toMatchObject({ agentAuth: 'tokenreview', auth: 'bearer token' });
    const port = (listening.listen as { port: number }).port;

    const agentA = start(['agent', '--collector', `ws://127.0.0.1:${port}`, '--node', 'node-a', '--token-file', join(dir, 'token')]);
    await waitFor('the expired token refused', () => collectorProc.lines.find((l) => l.msg === 'refused an agent connection'), 15_000);
    expect(await waitFor('the agent saying so', () => agentA.lines.find((l) => l.msg === 'collector refused our token'), 5_000)).toMatchObject({ status: 401 });
    const fresh = api.issueToken({ namespace: NS, pod: 'conntrail-agent-aaaaa', audiences: ['conntrail'] });
    writeFileSync(join(dir, 'token'), fresh);
    await waitFor('node-a streaming', () => collectorProc.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'node-a'), 30_000);

    writeFileSync(join(dir, 'stolen'), fresh);
    const thief = start(['agent', '--collector', `ws://127.0.0.1:${port}`, '--node', 'node-b', '--token-file', join(dir, 'stolen')]);
    await waitFor('the thief closed with 4403', () => thief.lines.find((l) => l.msg === 'collector connection closed; reconnecting' && l.code === 4403), 30_000);
    const res = await fetch(`http://127.0.0.1:${port}/api/nodes`, { headers: { authorization: `Bearer ${SHARED}` } });
    const body = (await res.json()) as { nodes: { node: string }[]; collector: { rejectedFrames: Record<string, number> } };
    expect(body.nodes.map((n) => n.node)).toEqual(['node-a']);
    expect(body.collector.rejectedFrames['wrong-node']).toBeGreaterThanOrEqual(1);
    expect(JSON.stringify(collectorProc.lines)).not.toContain(fresh);
  });

  it('refuses --agent-auth tokenreview without the API, and defaults to the shared token outside a cluster', async () => {
    const bad = start(['collector', '--listen', '127.0.0.1:0', '--agent-auth', 'tokenreview', '--no-kubernetes']);
    const code = await new Promise<number | null>((r) => bad.child.on('close', r));
    expect(code).toBe(2);
    expect(bad.stderr()).toContain('--agent-auth tokenreview reviews tokens with the Kubernetes API, which --no-kubernetes turns off');
    const wrong = start(['collector', '--listen', '127.0.0.1:0', '--agent-auth', 'maybe', '--no-kubernetes']);
    expect(await new Promise<number | null>((r) => wrong.child.on('close', r))).toBe(2);
    expect(wrong.stderr()).toContain('--agent-auth: "maybe" is not token, tokenreview or both');

    const plain = start(['collector', '--listen', '127.0.0.1:0', '--no-kubernetes', '--capture', 'off']);
    expect(await waitFor('collector listening', () => plain.lines.find((l) => l.msg === 'collector listening'), 15_000)).toMatchObject({ agentAuth: 'token' });
  });
});
