// The command-line mistakes and failures a person meets, with what conntrail
// must answer: one line on stderr naming the flag or path, exit 2 (the command
// line is wrong) or 3 (it failed), and no stack trace. One table, run against
// the checkout (test/bin/cli-errors.test.ts) and, for the client commands,
// against a packed global install on Node 22 (test/bin/global-install.test.ts).
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const root = new URL('../..', import.meta.url).pathname;
export const SEED_002 = join(root, 'test/fixtures/timelines/seed-002-reuse-to-removed-endpoint');

/** What the cases point at: ports and a scratch directory made for the run. */
export interface CaseContext {
  /** A loopback port nothing listens on. */
  readonly closedPort: number;
  /** A loopback port something else holds. */
  readonly busyPort: number;
  /** An HTTP server answering every request 401 {"error":"unauthorized"}, as a collector does without the token. */
  readonly refusingPort: number;
  /** An HTTP server answering 200 with a web page: something that is not a collector. */
  readonly htmlPort: number;
  readonly scratch: string;
}

export interface ErrorCase {
  readonly name: string;
  /** Client commands run on Node 22 from a global install too; node-side ones only from the checkout. */
  readonly side: 'client' | 'node';
  readonly args: (c: CaseContext) => string[];
  readonly code: 2 | 3;
  /** The one stderr line: what it must name. */
  readonly line: RegExp;
}

const usage = (name: string, side: ErrorCase['side'], args: ErrorCase['args'], line: RegExp): ErrorCase => ({ name, side, args, code: 2, line });
const failure = (name: string, side: ErrorCase['side'], args: ErrorCase['args'], line: RegExp): ErrorCase => ({ name, side, args, code: 3, line });

export const errorCases: readonly ErrorCase[] = [
  usage('an unknown command', 'client', () => ['frob'], /^conntrail: unknown command "frob"; see conntrail --help$/),
  usage('parse without SOURCE', 'client', () => ['parse'], /^conntrail: parse: SOURCE is required \(one of iptables, nft, /),
  usage('parse with an unknown source', 'client', () => ['parse', 'netstat', '/dev/null'], /^conntrail: parse: unknown source "netstat" \(one of iptables/),
  usage('parse of a missing file', 'client', () => ['parse', 'conntrack', '/nonexistent/x'], /^conntrail: parse: cannot read \/nonexistent\/x: no such file or directory/),
  usage('logs of a missing file', 'client', () => ['logs', '/nonexistent/collector.jsonl'], /^conntrail: logs: cannot read \/nonexistent\/collector\.jsonl: no such file or directory/),
  usage('logs of a directory', 'client', (c) => ['logs', c.scratch], /^conntrail: logs: cannot read \/\S+: it is a directory/),
  usage('logs with an unknown flag', 'client', () => ['logs', '--colour'], /^conntrail: logs: Unknown option '--colour'; see conntrail logs --help$/),
  usage('replay without DIR', 'client', () => ['replay'], /^conntrail: replay: DIR is required/),
  usage('replay of a missing directory', 'client', () => ['replay', '/nonexistent/timeline'], /^conntrail: replay: \/nonexistent\/timeline does not exist$/),
  usage('replay with a missing --kube directory', 'client', () => ['replay', SEED_002, '--kube', '/nonexistent/kube'], /^conntrail: replay: \/nonexistent\/kube: cannot read/),
  usage('replay with an unknown flag', 'client', () => ['replay', SEED_002, '--kubernetes', 'x'], /^conntrail: replay: Unknown option '--kubernetes'/),
  usage('services of a missing directory', 'client', () => ['services', '/nonexistent/step'], /^conntrail: services: \/nonexistent\/step is not a directory$/),
  usage('services with an unknown flag', 'client', () => ['services', '--jsn'], /^conntrail: services: Unknown option '--jsn'/),
  usage('incidents without --collector', 'client', () => ['incidents'], /^conntrail: incidents: --collector URL is required/),
  usage('incidents with a --collector that is not a URL', 'client', () => ['incidents', '--collector', 'nowhere'], /^conntrail: incidents: --collector: "nowhere" is not http:\/\/HOST:PORT/),
  usage('incidents with a missing --token-file', 'client', (c) => ['incidents', '--collector', `http://127.0.0.1:${c.closedPort}`, '--token-file', '/nonexistent/token'], /^conntrail: incidents: --token-file: cannot read \/nonexistent\/token: no such file or directory/),
  usage('incidents with a missing --ca', 'client', (c) => ['incidents', '--collector', `https://127.0.0.1:${c.closedPort}`, '--ca', '/nonexistent/ca.pem'], /^conntrail: incidents: --ca: cannot read \/nonexistent\/ca\.pem/),
  failure('incidents from a collector that is not there', 'client', (c) => ['incidents', '--collector', `http://127.0.0.1:${c.closedPort}`], /^conntrail: incidents: cannot reach the collector at http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/),
  failure('incidents refused by the collector', 'client', (c) => ['incidents', '--collector', `http://127.0.0.1:${c.refusingPort}`], /^conntrail: incidents: the collector at http:\/\/127\.0\.0\.1:\d+ answered 401: \{"error":"unauthorized"\}$/),
  failure('incidents from something that is not a collector', 'client', (c) => ['incidents', '--collector', `http://127.0.0.1:${c.htmlPort}`], /^conntrail: incidents: http:\/\/127\.0\.0\.1:\d+ answered \/api\/incidents with something other than conntrail's incident list/),
  usage('findings without --collector', 'client', () => ['findings'], /^conntrail: findings: --collector URL is required/),
  usage('findings with a --since that is no duration', 'client', (c) => ['findings', '--collector', `http://127.0.0.1:${c.closedPort}`, '--since', 'ten'], /^conntrail: findings: --since: /),
  failure('findings from a collector that is not there', 'client', (c) => ['findings', '--collector', `http://127.0.0.1:${c.closedPort}`], /^conntrail: findings: cannot reach the collector at http:\/\/127\.0\.0\.1:\d+: .*ECONNREFUSED/),
  failure('findings refused by the collector', 'client', (c) => ['findings', '--collector', `http://127.0.0.1:${c.refusingPort}`], /^conntrail: findings: the collector at http:\/\/127\.0\.0\.1:\d+ answered 401: \{"error":"unauthorized"\}$/),
  failure('findings from something that is not a collector', 'client', (c) => ['findings', '--collector', `http://127.0.0.1:${c.htmlPort}`], /^conntrail: findings: http:\/\/127\.0\.0\.1:\d+ answered \/api\/findings with text\/html.*, not NDJSON/),
  usage('bundle without -o', 'client', (c) => ['bundle', '--collector', `http://127.0.0.1:${c.closedPort}`, '--since', '10m'], /^conntrail: bundle: -o FILE is required/),
  usage('bundle without --incident or --since', 'client', (c) => ['bundle', '--collector', `http://127.0.0.1:${c.closedPort}`, '-o', join(c.scratch, 'b.tar.gz')], /^conntrail: bundle: one of --incident ID or --since 10m is required/),
  usage('bundle with a bad --since', 'client', (c) => ['bundle', '--collector', `http://127.0.0.1:${c.closedPort}`, '--since', '10x', '-o', join(c.scratch, 'b.tar.gz')], /^conntrail: bundle: --since: "10x" is not a duration/),
  failure('bundle to an output in a missing directory', 'client', (c) => ['bundle', '--collector', `http://127.0.0.1:${c.closedPort}`, '--since', '10m', '-o', '/nonexistent/dir/b.tar.gz'], /^conntrail: bundle: -o: cannot write \/nonexistent\/dir\/b\.tar\.gz: no such file or directory$/),
  failure('bundle to an output that is a directory', 'client', (c) => ['bundle', '--collector', `http://127.0.0.1:${c.closedPort}`, '--since', '10m', '-o', c.scratch], /^conntrail: bundle: -o: cannot write \/\S+: it is a directory$/),
  failure('bundle from a collector that is not there', 'client', (c) => ['bundle', '--collector', `http://127.0.0.1:${c.closedPort}`, '--since', '10m', '-o', join(c.scratch, 'b.tar.gz')], /^conntrail: bundle: cannot reach the collector at http:\/\/127\.0\.0\.1:\d+/),

  usage('local --interval fast', 'node', () => ['local', '--interval', 'fast'], /^conntrail: local: --interval: "fast" is not a duration like 500ms, 90s, 10m/),
  usage('local --interval below the least', 'node', () => ['local', '--interval', '10ms'], /^conntrail: local: --interval: "10ms" is shorter than the least it takes, 100ms/),
  usage('local --listen nowhere', 'node', () => ['local', '--listen', 'nowhere'], /^conntrail: local: --listen: "nowhere" is not HOST:PORT or unix:PATH/),
  usage('collector --capture 1x', 'node', () => ['collector', '--capture', '1x', '--no-kubernetes'], /^conntrail: collector: --capture: "1x" is not a duration like .*, or off/),
  usage('collector --history -5m', 'node', () => ['collector', '--history', '-5m', '--no-kubernetes'], /^conntrail: collector: --history needs a value, and takes one that starts with - only as --history=VALUE/),
  usage('collector --history=-5m', 'node', () => ['collector', '--history=-5m', '--no-kubernetes'], /^conntrail: collector: --history: "-5m" is not a duration/),
  usage('collector --listen nowhere', 'node', () => ['collector', '--listen', 'nowhere', '--no-kubernetes'], /^conntrail: collector: --listen: "nowhere" is not HOST:PORT or unix:PATH/),
  usage('collector --metrics-listen nowhere', 'node', () => ['collector', '--metrics-listen', 'nowhere', '--no-kubernetes'], /^conntrail: collector: --metrics-listen: "nowhere" is not HOST:PORT/),
  usage('collector --memory-budget lots', 'node', () => ['collector', '--memory-budget', 'lots', '--no-kubernetes'], /^conntrail: collector: --memory-budget: "lots" is not a size/),
  usage('collector with a missing --token-file', 'node', () => ['collector', '--token-file', '/nonexistent/token', '--no-kubernetes'], /^conntrail: collector: --token-file: cannot read \/nonexistent\/token/),
  usage('collector --tls-cert without --tls-key', 'node', () => ['collector', '--tls-cert', '/nonexistent/cert.pem', '--no-kubernetes'], /^conntrail: collector: --tls-cert and --tls-key go together/),
  usage('collector with a missing --tls-cert', 'node', () => ['collector', '--tls-cert', '/nonexistent/cert.pem', '--tls-key', '/nonexistent/key.pem', '--no-kubernetes'], /^conntrail: collector: --tls-cert: cannot read \/nonexistent\/cert\.pem/),
  usage('collector with a missing --kubeconfig', 'node', () => ['collector', '--kubeconfig', '/nonexistent/kubeconfig'], /^conntrail: collector: --kubeconfig: cannot read \/nonexistent\/kubeconfig/),
  usage('collector --agent-auth maybe', 'node', () => ['collector', '--agent-auth', 'maybe', '--no-kubernetes'], /^conntrail: collector: --agent-auth: "maybe" is not token, tokenreview or both/),
  usage('collector with an unknown flag', 'node', () => ['collector', '--no-kubernets'], /^conntrail: collector: Unknown option '--no-kubernets'/),
  failure('collector on a port that is taken', 'node', (c) => ['collector', '--listen', `127.0.0.1:${c.busyPort}`, '--no-kubernetes', '--capture', 'off'], /^conntrail: collector: --listen: cannot listen on 127\.0\.0\.1:\d+: address already in use$/),
  failure('collector with a --data-dir it cannot create', 'node', () => ['collector', '--data-dir', '/dev/null/data', '--listen', '127.0.0.1:0', '--no-kubernetes'], /^conntrail: collector: --data-dir: cannot use \/dev\/null\/data: not a directory$/),
  usage('agent without --collector', 'node', () => ['agent'], /^conntrail: agent: --collector ws:\/\/HOST:PORT is required/),
  usage('agent with a --collector that is not a URL', 'node', () => ['agent', '--collector', 'collector:7470'], /^conntrail: agent: --collector: "collector:7470" is not ws:\/\/HOST:PORT/),
  usage('agent --interval fast', 'node', (c) => ['agent', '--collector', `ws://127.0.0.1:${c.closedPort}`, '--interval', 'fast'], /^conntrail: agent: --interval: "fast" is not a duration/),
  usage('agent --journal-max-age forever', 'node', (c) => ['agent', '--collector', `ws://127.0.0.1:${c.closedPort}`, '--journal-max-age', 'forever'], /^conntrail: agent: --journal-max-age: "forever" is not a duration .*, or off/),
  usage('agent --health-listen nowhere', 'node', (c) => ['agent', '--collector', `ws://127.0.0.1:${c.closedPort}`, '--health-listen', 'nowhere'], /^conntrail: agent: --health-listen: "nowhere" is not HOST:PORT/),
  usage('agent with a missing --token-file', 'node', (c) => ['agent', '--collector', `ws://127.0.0.1:${c.closedPort}`, '--token-file', '/nonexistent/token'], /^conntrail: agent: --token-file: cannot read \/nonexistent\/token/),
  usage('agent with a missing --ca', 'node', (c) => ['agent', '--collector', `wss://127.0.0.1:${c.closedPort}`, '--ca', '/nonexistent/ca.pem'], /^conntrail: agent: --ca: cannot read \/nonexistent\/ca\.pem/),
  usage('doctor --gap fast', 'node', () => ['doctor', '--gap', 'fast'], /^conntrail: doctor: --gap: "fast" is not a duration/),
  usage('doctor with an unknown flag', 'node', () => ['doctor', '--jsn'], /^conntrail: doctor: Unknown option '--jsn'/),
];

export const commands = ['collector', 'agent', 'local', 'services', 'parse', 'replay', 'incidents', 'findings', 'bundle', 'logs', 'doctor'] as const;
export const clientCommands = ['logs', 'parse', 'incidents', 'findings', 'bundle', 'replay', 'services'] as const;

export interface Ran {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs `argv[0] argv[1..]` to its end, killed after `timeoutMs` (a hang is a failure the caller sees as signal SIGKILL). */
export function runTo(argv: readonly string[], o: { env?: NodeJS.ProcessEnv; stdin?: string; timeoutMs?: number } = {}): Promise<Ran> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('runTo: empty argv');
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: o.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 15_000);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(o.stdin ?? '');
  });
}

/** The ports and scratch directory the cases name, and their teardown. */
export async function caseContext(): Promise<CaseContext & { close(): Promise<void> }> {
  const listening = (server: Server): Promise<number> =>
    new Promise((resolve) =>
      server.listen(0, '127.0.0.1', () => {
        const a = server.address();
        resolve(typeof a === 'object' && a !== null ? a.port : 0);
      }),
    );
  const closed = createServer();
  const closedPort = await listening(closed);
  await new Promise((r) => closed.close(r));
  const busy = createServer();
  const busyPort = await listening(busy);
  const refusing = createServer((_req, res) => res.writeHead(401, { 'content-type': 'application/json' }).end('{"error":"unauthorized"}'));
  const refusingPort = await listening(refusing);
  const html = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html>\n<title>Welcome to nginx!</title>\n'));
  const htmlPort = await listening(html);
  const scratch = mkdtempSync(join(tmpdir(), 'conntrail-cli-'));
  return {
    closedPort,
    busyPort,
    refusingPort,
    htmlPort,
    scratch,
    async close() {
      for (const s of [busy, refusing, html]) await new Promise((r) => s.close(r));
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}

/** What every error case must show, as one message a test can print: null when it does. */
export function judge(c: ErrorCase, ran: Ran): string | null {
  const lines = ran.stderr.split('\n').filter((l) => l !== '');
  const problems: string[] = [];
  if (ran.signal !== null) problems.push(`ended by ${ran.signal} (a hang?)`);
  if (ran.code !== c.code) problems.push(`exit ${String(ran.code)}, not ${c.code}`);
  if (lines.length !== 1) problems.push(`${lines.length} stderr lines, not 1`);
  if (!c.line.test(lines[0] ?? '')) problems.push(`stderr does not match ${String(c.line)}`);
  if (/^\s+at /m.test(ran.stderr) || /^\s+at /m.test(ran.stdout)) problems.push('a stack trace');
  // A wrong command line opens and prints nothing.
  if (c.code === 2 && ran.stdout !== '') problems.push('output on stdout');
  return problems.length === 0 ? null : `${problems.join('; ')}\nstderr: ${ran.stderr}\nstdout: ${ran.stdout.slice(0, 2000)}`;
}
