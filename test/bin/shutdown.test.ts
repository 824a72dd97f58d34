// A collector watching the Kubernetes API stops promptly on SIGTERM/SIGINT,
// well inside a pod's 30 s termination grace: it once lingered ~27 s on the
// API client's idle keep-alive socket after everything it opened was closed.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { KubeApiServer } from '../helpers/kube-api-server.ts';

const CLI = new URL('../../bin/conntrail.js', import.meta.url).pathname;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('collector shutdown', { timeout: 60_000 }, () => {
  it.each(['SIGINT', 'SIGTERM'] as const)('with the Kubernetes API watched, %s ends the process within 5 s with exit 0', async (signal) => {
    const api = new KubeApiServer();
    await api.listen();
    cleanups.push(() => api.close());
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-shutdown-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const child = spawn(process.execPath, [CLI, 'collector', '--listen', '127.0.0.1:0', '--kubeconfig', api.writeKubeconfig(dir)], { stdio: ['ignore', 'pipe', 'pipe'] });
    cleanups.push(() => void child.kill('SIGKILL'));
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const deadline = Date.now() + 20_000;
    while (!out.includes('watching"') && !out.includes('listed; watching') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(out, 'the collector never reported watching the API').toContain('listed; watching');
    const sent = Date.now();
    child.kill(signal);
    const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
    expect(Date.now() - sent).toBeLessThan(5_000);
    expect(code).toBe(0);
  });
});
