// Real conntrail processes around a lab: a collector on a unix socket (path
// sockets reach across network namespaces), and one agent inside each node's
// namespace, stopped with the lab.
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { collectJsonLines, waitFor } from '../helpers/capture-log.ts';
import type { Lab } from '../lab/netns.ts';
import { nodeBinary } from '../lab/traffic.ts';

const root = new URL('../..', import.meta.url).pathname;
export const cli = join(root, 'bin/conntrail.js');

export interface Conntrail {
  readonly sock: string;
  readonly token: string;
  readonly tokenFile: string;
  readonly dir: string;
  readonly lines: Record<string, unknown>[];
  api<T>(path: string): Promise<T>;
  startCollector(): void;
  killCollector(): Promise<void>;
  /** The first finding line of `kind` matching `pred`, within `timeoutMs`. */
  finding(kind: string, pred?: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  findings(): Record<string, unknown>[];
  stop(): Promise<void>;
}

/**
 * `kubeconfig`: the collector watches that (in-process) Kubernetes API;
 * without it the collector runs with --no-kubernetes, so a developer's own
 * ~/.kube/config is never touched by a test.
 */
export async function startConntrail(lab: Lab, nodes: readonly string[], token = 'lab-token', opts: { kubeconfig?: string } = {}): Promise<Conntrail> {
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-it-'));
  const sock = join(dir, 'collector.sock');
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const lines: Record<string, unknown>[] = [];
  let collector: ChildProcess | null = null;
  const startCollector = () => {
    rmSync(sock, { force: true });
    // Short captures keep the lab quick; the default is 15 s.
    const child = spawn(nodeBinary(), [cli, 'collector', '--listen', `unix:${sock}`, '--token-file', tokenFile, '--capture', '4s', ...(opts.kubeconfig ? ['--kubeconfig', opts.kubeconfig] : ['--no-kubernetes'])], { stdio: ['ignore', 'pipe', 'inherit'] });
    collectJsonLines(child.stdout, lines);
    collector = child;
  };
  const api = <T>(path: string): Promise<T> =>
    new Promise((resolve, reject) => {
      const req = request({ socketPath: sock, path, headers: { authorization: `Bearer ${token}` }, timeout: 3_000 }, (res) => {
        let body = '';
        res.on('data', (d: Buffer) => (body += d.toString()));
        res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(body) as T) : reject(new Error(`${path}: HTTP ${res.statusCode}: ${body}`))));
      });
      req.on('error', reject);
      req.end();
    });
  startCollector();
  await waitFor('collector listening', () => lines.find((l) => l.msg === 'collector listening'), 10_000);
  for (const node of nodes) lab.spawn(node, [nodeBinary(), cli, 'agent', '--collector', `ws+unix:${sock}`, '--node', node, '--interval', '1s', '--token-file', tokenFile]);
  await waitFor('every agent snapshot', () => nodes.every((n) => lines.some((l) => l.msg === 'snapshot applied' && l.node === n)), 20_000);
  const findings = () => lines.filter((l) => typeof l.finding === 'string');
  return {
    sock,
    token,
    tokenFile,
    dir,
    lines,
    api,
    startCollector,
    async killCollector() {
      const c = collector;
      if (c === null || c.exitCode !== null) return;
      c.kill('SIGKILL');
      await new Promise((r) => c.once('exit', r));
    },
    finding: (kind, pred = () => true, timeoutMs = 10_000) =>
      waitFor(`a ${kind} finding`, () => findings().find((l) => l.finding === kind && pred(l)), timeoutMs).catch((err: Error) => {
        throw new Error(`${err.message}; findings so far: ${JSON.stringify(findings().map((f) => [f.finding, f.severity, f.node, f.tuple, f.endpoint]))}`);
      }),
    findings,
    async stop() {
      // For the README's "Reading a finding": the real lines a lab run produced.
      const dump = process.env.CONNTRAIL_FINDINGS_DUMP;
      if (dump) appendFileSync(dump, findings().map((f) => `${JSON.stringify(f)}\n`).join(''));
      // For the README's "Sample of the collector's output": the whole log of a real run.
      const logDump = process.env.CONNTRAIL_COLLECTOR_LOG_DUMP;
      if (logDump) appendFileSync(logDump, lines.map((l) => `${JSON.stringify(l)}\n`).join(''));
      const c = collector;
      if (c !== null && c.exitCode === null) {
        c.kill('SIGKILL');
        await new Promise((r) => c.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
