// `conntrail logs` and `conntrail collector --pretty`, as a person runs them:
// piped the collector's JSON log, and watching a live collector's own output.
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/capture-log.ts';

const root = new URL('../..', import.meta.url).pathname;
const cli = join(root, 'bin/conntrail.js');
const sample = readFileSync(join(root, 'test/fixtures/logs/lab-collector.jsonl'), 'utf8');

function runCli(args: string[], stdin: string, env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cli, ...args], { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(stdin);
  });
}

describe('conntrail logs', { timeout: 20_000 }, () => {
  it('renders piped JSON lines for people, keeps foreign lines, and adds no colour to a pipe', async () => {
    const input = `${sample}Error from server (BadRequest): container "collector" in pod "conntrail-collector-5d9" is waiting to start\n`;
    const { code, stdout } = await runCli(['logs'], input, { NO_COLOR: '' });
    expect(code).toBe(0);
    expect(stdout).toContain('ERROR lb-hairpin  node-1  nginx-demo/service-nginx-demo');
    expect(stdout).toContain('  endpoint  198.19.2.10:53 (pod kube-system/coredns-a)');
    expect(stdout).toContain('Error from server (BadRequest): container "collector" in pod "conntrail-collector-5d9" is waiting to start\n');
    expect(stdout).not.toContain('\x1b[');
    expect(stdout).not.toContain('{"level"');
  });

  it('colours by severity with --color', async () => {
    const { stdout } = await runCli(['logs', '--color'], sample);
    expect(stdout).toContain('\x1b[31mERROR\x1b[0m');
  });

  it('`collector --pretty --color` prints its own log rendered, a warning in yellow', async () => {
    const child = spawn(process.execPath, [cli, 'collector', '--listen', '127.0.0.1:0', '--no-kubernetes', '--pretty', '--color'], { env: { ...process.env, CONNTRAIL_TOKEN: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor('the no-token warning', () => out.includes('no token configured'), 10_000);
      expect(out).toContain('\x1b[33mWARN \x1b[0m no token configured');
      expect(out).toMatch(/INFO \x1b\[0m collector listening/);
      expect(out).not.toContain('{"level"');
    } finally {
      child.kill('SIGINT');
      await new Promise((r) => child.on('close', r));
    }
  });
});
