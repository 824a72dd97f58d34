// wss:// and https:// end to end with real processes: a collector with a
// certificate signed by a throwaway CA, an agent that trusts that CA (--ca)
// streaming its node, one that does not and says why, and the CLI reading
// the API over https with the CA and the token.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { makeCertificates } from '../helpers/certs.ts';
import { collectJsonLines, waitFor } from '../helpers/capture-log.ts';

const run = promisify(execFile);
const root = new URL('../..', import.meta.url).pathname;
const cli = join(root, 'bin/conntrail.js');
const TOKEN = 'tls-test-token';

const children: ChildProcess[] = [];
const dirs: string[] = [];
afterEach(async () => {
  for (const c of children.splice(0)) {
    c.kill('SIGINT');
    await new Promise((r) => (c.exitCode !== null ? r(null) : c.on('close', r)));
  }
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function start(args: string[]): { child: ChildProcess; lines: Record<string, unknown>[] } {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, CONNTRAIL_TOKEN: '' } });
  children.push(child);
  const lines: Record<string, unknown>[] = [];
  collectJsonLines(child.stdout, lines);
  return { child, lines };
}

function httpsGet(port: number, path: string, ca: string, token: string | null): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, ca, headers: token === null ? {} : { authorization: `Bearer ${token}` } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('TLS between agents, the collector and the CLI', { timeout: 60_000 }, () => {
  it('streams over wss with --ca, refuses to trust the collector without it, and serves https with the token', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-tls-'));
    dirs.push(dir);
    const certs = makeCertificates();
    for (const [name, text] of Object.entries({ 'ca.pem': certs.ca, 'cert.pem': certs.cert, 'key.pem': certs.key, token: `${TOKEN}\n` })) writeFileSync(join(dir, name), text, { mode: 0o600 });

    const collector = start(['collector', '--listen', '127.0.0.1:0', '--no-kubernetes', '--token-file', join(dir, 'token'), '--tls-cert', join(dir, 'cert.pem'), '--tls-key', join(dir, 'key.pem')]);
    const listening = await waitFor('collector listening', () => collector.lines.find((l) => l.msg === 'collector listening'), 10_000);
    expect(listening).toMatchObject({ tls: true, auth: 'bearer token' });
    const port = (listening.listen as { port: number }).port;

    // The agent reads this host (read-only) through the real samplers.
    const untrusting = start(['agent', '--collector', `wss://127.0.0.1:${port}`, '--node', 'tls-no-ca', '--token-file', join(dir, 'token')]);
    const trusting = start(['agent', '--collector', `wss://127.0.0.1:${port}`, '--node', 'tls-node', '--token-file', join(dir, 'token'), '--ca', join(dir, 'ca.pem')]);

    await waitFor('the trusting agent streaming', () => collector.lines.find((l) => l.msg === 'snapshot applied' && l.node === 'tls-node'), 30_000);
    const refusal = await waitFor('the untrusting agent naming the problem', () => untrusting.lines.find((l) => String(l.msg).startsWith("collector's TLS certificate is not trusted")), 10_000);
    expect(refusal).toMatchObject({ code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' });
    expect(collector.lines.some((l) => l.node === 'tls-no-ca' && l.msg === 'agent connected')).toBe(false);

    const nodes = await httpsGet(port, '/api/nodes', certs.ca, TOKEN);
    expect(nodes.status).toBe(200);
    expect((JSON.parse(nodes.body) as { nodes: { node: string }[] }).nodes.map((n) => n.node)).toEqual(['tls-node']);
    expect(await httpsGet(port, '/api/nodes', certs.ca, null)).toEqual({ status: 401, body: '{"error":"unauthorized"}' });

    const incidents = await run(process.execPath, [cli, 'incidents', '--collector', `https://127.0.0.1:${port}`, '--ca', join(dir, 'ca.pem'), '--token-file', join(dir, 'token'), '--json']);
    expect(JSON.parse(incidents.stdout)).toEqual([]);
    const withoutCa = await run(process.execPath, [cli, 'incidents', '--collector', `https://127.0.0.1:${port}`, '--token-file', join(dir, 'token')]).catch((err: { stderr: string; code: number }) => err);
    expect(withoutCa).toMatchObject({ code: 3, stderr: expect.stringContaining('pass the CA that signed the collector\'s certificate with --ca') });
    expect(trusting.child.exitCode).toBeNull();
  });
});
