// Traffic for the lab. Run as a script inside a namespace:
//   ip netns exec NS node_modules/.bin/node test/lab/traffic.ts MODE …
// and imported by tests for the helpers that start it (startServer, runClient,
// startClient). Modes:
//   tcp-server PORT --name POD            accept, write "POD\n", close
//   udp-server PORT --name POD            answer each datagram with "POD <datagram>"
//   tcp-client HOST PORT --count N --timeout-ms T [--sport P] [--interval-ms I]
//   udp-client HOST PORT --sport P --count N --interval-ms I [--timeout-ms T]
//   tcp-syn HOST PORT --sport P [--src ADDR] [--count N] [--interval-ms I] [--timeout-ms T]
// Clients print one JSON line per attempt (ok/timeout/reset/refused/error and
// the pod that answered) and a final {"event":"done"}; servers print
// {"event":"listening"} once bound and one line per connection or datagram.
// Every loop is bounded in count and time, and only lab addresses
// (198.18.0.0/15) are ever contacted.
import dgram from 'node:dgram';
import net from 'node:net';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Lab, LabProcess } from './netns.ts';

export type AttemptStatus = 'ok' | 'timeout' | 'reset' | 'refused' | 'error';

/** One client attempt, as printed by the script. */
export interface Attempt {
  readonly kind: 'tcp' | 'udp' | 'syn';
  readonly seq: number;
  readonly status: AttemptStatus;
  /** The pod name the server answered with. */
  readonly pod?: string;
  /** Wall-clock start of the attempt (ms since epoch). */
  readonly at: number;
  readonly ms: number;
  readonly error?: string;
}

/** A connection or datagram a server saw. */
export interface ServerEvent {
  readonly event: 'accept' | 'datagram';
  readonly peer: string;
  readonly local: string;
  readonly at: number;
}

const MAX_COUNT = 10_000;
const MAX_TIMEOUT_MS = 60_000;
const SERVER_MAX_LIFETIME_MS = 10 * 60_000;

// --- the script -------------------------------------------------------------

function isLabAddress(host: string): boolean {
  // 198.18.0.0/15: the benchmark range (RFC 2544), used for everything in the lab.
  const parts = host.split('.').map(Number);
  return parts.length === 4 && parts.every((n) => Number.isInteger(n) && n >= 0 && n <= 255) && parts[0] === 198 && (parts[1] === 18 || parts[1] === 19);
}

interface Args {
  readonly positional: string[];
  readonly flags: Map<string, string>;
}

function parseArgs(argv: readonly string[]): Args {
  const positional: string[] = [];
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] ?? '';
    if (a.startsWith('--')) {
      flags.set(a.slice(2), argv[i + 1] ?? '');
      i++;
    } else positional.push(a);
  }
  return { positional, flags };
}

function fail(message: string): never {
  process.stderr.write(`traffic: ${message}\n`);
  process.exit(2);
}

function intFlag(args: Args, name: string, dflt: number | undefined, min: number, max: number): number {
  const text = args.flags.get(name);
  if (text === undefined) {
    if (dflt === undefined) fail(`--${name} is required`);
    return dflt;
  }
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) fail(`--${name} must be an integer in [${min}, ${max}], got ${JSON.stringify(text)}`);
  return n;
}

function emit(obj: object): void {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function classify(err: NodeJS.ErrnoException): AttemptStatus {
  if (err.code === 'ECONNREFUSED') return 'refused';
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') return 'reset';
  if (err.code === 'ETIMEDOUT') return 'timeout';
  return 'error';
}

function target(args: Args): { host: string; port: number } {
  const [host, portText] = args.positional;
  if (host === undefined || !isLabAddress(host)) fail(`refusing to send to ${JSON.stringify(host)}: only 198.18.0.0/15 lab addresses`);
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`bad port ${JSON.stringify(portText)}`);
  return { host, port };
}

function serve(args: Args, kind: 'tcp' | 'udp'): void {
  const port = Number(args.positional[0]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) fail(`bad port ${JSON.stringify(args.positional[0])}`);
  const name = args.flags.get('name') ?? 'unnamed';
  const lifetime = intFlag(args, 'max-ms', SERVER_MAX_LIFETIME_MS, 1, SERVER_MAX_LIFETIME_MS);
  setTimeout(() => process.exit(0), lifetime).unref();
  if (kind === 'tcp') {
    const server = net.createServer((sock) => {
      emit({ event: 'accept', peer: `${sock.remoteAddress}:${sock.remotePort}`, local: `${sock.localAddress}:${sock.localPort}`, at: Date.now() });
      sock.on('error', () => undefined);
      sock.end(`${name}\n`);
    });
    server.listen({ port, host: '0.0.0.0' }, () => emit({ event: 'listening', kind, port, name }));
  } else {
    const sock = dgram.createSocket('udp4');
    sock.on('message', (msg, rinfo) => {
      emit({ event: 'datagram', peer: `${rinfo.address}:${rinfo.port}`, local: `0.0.0.0:${port}`, at: Date.now() });
      sock.send(`${name} ${msg.toString('utf8')}`, rinfo.port, rinfo.address);
    });
    sock.bind(port, '0.0.0.0', () => emit({ event: 'listening', kind, port, name }));
  }
}

function tcpAttempt(kind: 'tcp' | 'syn', seq: number, host: string, port: number, timeoutMs: number, sport: number | undefined, src: string | undefined): Promise<Attempt> {
  const at = Date.now();
  return new Promise((resolve) => {
    let data = '';
    let settled = false;
    const sock = net.connect({ host, port, ...(sport !== undefined ? { localPort: sport } : {}), ...(src !== undefined ? { localAddress: src } : {}) });
    const done = (status: AttemptStatus, extra: { pod?: string; error?: string } = {}): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      // A probe that connected is reset, not closed: no TIME_WAIT is left
      // behind, so the next probe from the same fixed source port can bind.
      // (resetAndDestroy on a socket still connecting would wait for the
      // connection, so everything else is simply destroyed.)
      if (kind === 'syn' && status === 'ok') sock.resetAndDestroy();
      else sock.destroy();
      resolve({ kind, seq, status, at, ms: Date.now() - at, ...extra });
    };
    const timer = setTimeout(() => done('timeout'), timeoutMs);
    sock.on('connect', () => {
      if (kind === 'syn') done('ok');
    });
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      data += chunk;
    });
    sock.on('end', () => {
      const pod = data.trim().split('\n')[0];
      if (pod) done('ok', { pod });
      else done('error', { error: 'connection closed without a pod name' });
    });
    sock.on('error', (err: NodeJS.ErrnoException) => done(classify(err), { error: err.code ?? err.message }));
  });
}

async function tcpClient(args: Args, kind: 'tcp' | 'syn'): Promise<void> {
  const { host, port } = target(args);
  const count = intFlag(args, 'count', 1, 1, MAX_COUNT);
  const timeoutMs = intFlag(args, 'timeout-ms', 2_000, 1, MAX_TIMEOUT_MS);
  const intervalMs = intFlag(args, 'interval-ms', 0, 0, MAX_TIMEOUT_MS);
  const sport = args.flags.has('sport') ? intFlag(args, 'sport', undefined, 1, 65535) : undefined;
  const src = args.flags.get('src');
  if (kind === 'syn' && sport === undefined) fail('tcp-syn needs --sport');
  if (src !== undefined && !isLabAddress(src)) fail(`--src ${src} is not a lab address`);
  for (let seq = 1; seq <= count; seq++) {
    const started = Date.now();
    emit(await tcpAttempt(kind, seq, host, port, timeoutMs, sport, src));
    if (seq < count) await sleep(Math.max(0, intervalMs - (Date.now() - started)));
  }
  emit({ event: 'done' });
}

async function udpClient(args: Args): Promise<void> {
  const { host, port } = target(args);
  const sport = intFlag(args, 'sport', undefined, 1, 65535);
  const count = intFlag(args, 'count', undefined, 1, MAX_COUNT);
  const intervalMs = intFlag(args, 'interval-ms', undefined, 1, MAX_TIMEOUT_MS);
  const timeoutMs = intFlag(args, 'timeout-ms', intervalMs, 1, MAX_TIMEOUT_MS);
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(sport, '0.0.0.0', () => resolve());
  });
  // Replies are matched to their attempt by sequence number; a late reply to an earlier attempt is ignored.
  const waiting = new Map<number, (pod: string) => void>();
  sock.on('message', (msg) => {
    const m = /^(\S+) seq=(\d+)$/.exec(msg.toString('utf8'));
    if (m) waiting.get(Number(m[2]))?.(m[1] ?? '');
  });
  for (let seq = 1; seq <= count; seq++) {
    const at = Date.now();
    const reply = new Promise<Attempt>((resolve) => {
      const timer = setTimeout(() => {
        waiting.delete(seq);
        resolve({ kind: 'udp', seq, status: 'timeout', at, ms: Date.now() - at });
      }, timeoutMs);
      waiting.set(seq, (pod) => {
        clearTimeout(timer);
        waiting.delete(seq);
        resolve({ kind: 'udp', seq, status: 'ok', pod, at, ms: Date.now() - at });
      });
    });
    sock.send(`seq=${seq}`, port, host, (err) => {
      if (err) waiting.get(seq)?.('');
    });
    emit(await reply);
    if (seq < count) await sleep(Math.max(0, intervalMs - (Date.now() - at)));
  }
  sock.close();
  emit({ event: 'done' });
}

async function main(argv: readonly string[]): Promise<void> {
  const [mode, ...rest] = argv;
  const args = parseArgs(rest);
  // The parent holds our stdin open; when it goes away, so do we.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.resume();
  switch (mode) {
    case 'tcp-server':
      return serve(args, 'tcp');
    case 'udp-server':
      return serve(args, 'udp');
    case 'tcp-client':
      await tcpClient(args, 'tcp');
      return process.exit(0);
    case 'tcp-syn':
      await tcpClient(args, 'syn');
      return process.exit(0);
    case 'udp-client':
      await udpClient(args);
      return process.exit(0);
    case undefined:
    default:
      fail(`unknown mode ${JSON.stringify(mode)}; expected tcp-server, udp-server, tcp-client, udp-client or tcp-syn`);
  }
}

if (import.meta.main) {
  main(process.argv.slice(2)).catch((err: unknown) => fail(err instanceof Error ? err.message : String(err)));
}

// --- helpers for tests ------------------------------------------------------

const SCRIPT = fileURLToPath(import.meta.url);

/** The Node 24 binary of this repository (node_modules/.bin/node), which runs .ts natively. */
export function nodeBinary(): string {
  const local = join(dirname(SCRIPT), '..', '..', 'node_modules', '.bin', 'node');
  return existsSync(local) ? local : process.execPath;
}

/** argv that runs the traffic script in a namespace through `lab.spawn`. */
export function trafficArgv(mode: string, args: readonly (string | number)[]): string[] {
  return [nodeBinary(), SCRIPT, mode, ...args.map(String)];
}

function parseJson(line: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(line);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

const STATUSES: readonly string[] = ['ok', 'timeout', 'reset', 'refused', 'error'];

/** Decodes one script line into an Attempt, or undefined for anything else. */
export function parseAttempt(line: string): Attempt | undefined {
  const o = parseJson(line);
  if (!o) return undefined;
  const { kind, seq, status, at, ms, pod, error } = o;
  if ((kind !== 'tcp' && kind !== 'udp' && kind !== 'syn') || typeof seq !== 'number' || typeof status !== 'string' || !STATUSES.includes(status)) return undefined;
  if (typeof at !== 'number' || typeof ms !== 'number') return undefined;
  return { kind, seq, status: status as AttemptStatus, at, ms, ...(typeof pod === 'string' ? { pod } : {}), ...(typeof error === 'string' ? { error } : {}) };
}

/** Decodes one server line (accept/datagram), or undefined. */
export function parseServerEvent(line: string): ServerEvent | undefined {
  const o = parseJson(line);
  if (!o) return undefined;
  const { event, peer, local, at } = o;
  if ((event !== 'accept' && event !== 'datagram') || typeof peer !== 'string' || typeof local !== 'string' || typeof at !== 'number') return undefined;
  return { event, peer, local, at };
}

export interface ServerHandle {
  readonly process: LabProcess;
  readonly name: string;
  readonly port: number;
  /** Connections or datagrams seen so far. */
  events(): ServerEvent[];
}

/** Starts a tcp or udp server in `ns` and resolves once it is bound (bounded wait). */
export async function startServer(lab: Lab, ns: string, opts: { kind: 'tcp' | 'udp'; port: number; name: string }): Promise<ServerHandle> {
  const proc = lab.spawn(ns, trafficArgv(`${opts.kind}-server`, [opts.port, '--name', opts.name]));
  await proc.waitForLine(`${opts.kind} server ${opts.name} listening`, (l) => parseJson(l)?.['event'] === 'listening', 5_000);
  return {
    process: proc,
    name: opts.name,
    port: opts.port,
    events: () => proc.lines.map(parseServerEvent).filter((e): e is ServerEvent => e !== undefined),
  };
}

export type ClientOptions =
  | { readonly mode: 'tcp-client'; readonly host: string; readonly port: number; readonly count: number; readonly timeoutMs: number; readonly sport?: number; readonly intervalMs?: number }
  | { readonly mode: 'udp-client'; readonly host: string; readonly port: number; readonly sport: number; readonly count: number; readonly intervalMs: number; readonly timeoutMs?: number }
  | { readonly mode: 'tcp-syn'; readonly host: string; readonly port: number; readonly sport: number; readonly src?: string; readonly count?: number; readonly intervalMs?: number; readonly timeoutMs?: number };

function clientArgs(o: ClientOptions): (string | number)[] {
  const args: (string | number)[] = [o.host, o.port];
  const flag = (name: string, v: string | number | undefined): void => {
    if (v !== undefined) args.push(`--${name}`, v);
  };
  flag('count', o.count);
  flag('timeout-ms', o.timeoutMs);
  flag('interval-ms', o.intervalMs);
  flag('sport', o.sport);
  if (o.mode === 'tcp-syn') flag('src', o.src);
  return args;
}

// Worst-case run time of a client, so every wait on it is bounded.
function clientBudgetMs(o: ClientOptions): number {
  const count = o.count ?? 1;
  const timeout = o.timeoutMs ?? (o.mode === 'udp-client' ? o.intervalMs : 2_000);
  return count * (timeout + (o.intervalMs ?? 0)) + 5_000;
}

/** A running client: attempts arrive as the script prints them. */
export interface ClientRun {
  readonly process: LabProcess;
  attempts(): Attempt[];
  /** Resolves with the first attempt (seen or future) matching `pred`; rejects after `timeoutMs`. */
  waitFor(what: string, pred: (a: Attempt) => boolean, timeoutMs: number): Promise<Attempt>;
  /** Resolves with every attempt once the client printed "done" (bounded by its own budget). */
  readonly done: Promise<Attempt[]>;
}

/** Starts a client in `ns` without waiting for it. */
export function startClient(lab: Lab, ns: string, opts: ClientOptions): ClientRun {
  const proc = lab.spawn(ns, trafficArgv(opts.mode, clientArgs(opts)));
  const attempts = (): Attempt[] => proc.lines.map(parseAttempt).filter((a): a is Attempt => a !== undefined);
  const done = proc
    .waitForLine(`${opts.mode} to ${opts.host}:${opts.port} to finish`, (l) => parseJson(l)?.['event'] === 'done', clientBudgetMs(opts))
    .then(async () => {
      await proc.exited;
      return attempts();
    });
  // Callers that only use waitFor must not see an unhandled rejection from `done`.
  done.catch(() => undefined);
  return {
    process: proc,
    attempts,
    waitFor: async (what, pred, timeoutMs) => {
      const line = await proc.waitForLine(what, (l) => {
        const a = parseAttempt(l);
        return a !== undefined && pred(a);
      }, timeoutMs);
      const a = parseAttempt(line);
      if (!a) throw new Error(`unreadable attempt line: ${line}`);
      return a;
    },
    done,
  };
}

/** Runs a client in `ns` to completion and returns its attempts. */
export function runClient(lab: Lab, ns: string, opts: ClientOptions): Promise<Attempt[]> {
  return startClient(lab, ns, opts).done;
}
