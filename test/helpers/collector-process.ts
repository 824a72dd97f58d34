// A real `conntrail collector` process on loopback for tests that must see
// what a crash would do (the process exiting), plus raw-socket clients: HTTP
// requests written byte for byte, and a WebSocket spoken by hand so frames
// can be as broken as a hostile peer makes them.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SUBPROTOCOL } from '../../contract/protocol.ts';
import { nodeBinary } from '../lab/traffic.ts';
import { collectJsonLines, waitFor } from './capture-log.ts';

const root = new URL('../..', import.meta.url).pathname;
export const cli = join(root, 'bin/conntrail.js');

export interface CollectorProcess {
  readonly child: ChildProcess;
  readonly port: number;
  readonly token: string;
  /** Its JSON log lines, as they arrive. */
  readonly lines: Record<string, unknown>[];
  /** Everything it wrote to stdout and stderr, verbatim (for "never logged" checks). */
  readonly output: () => string;
  /** The test's scratch dir: the process's cwd is `dir/cwd`, its TMPDIR `dir/tmp`. */
  readonly dir: string;
  readonly exited: () => boolean;
  stop(): Promise<void>;
}

/** `dir`: the scratch dir of an earlier process, to share its cwd and TMPDIR (left for its owner to remove). */
export async function startCollectorProcess(opts: { token?: string; args?: readonly string[]; dir?: string } = {}): Promise<CollectorProcess> {
  const token = opts.token ?? 'fuzz-token';
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'conntrail-proc-'));
  for (const d of ['cwd', 'tmp']) mkdirSync(join(dir, d), { recursive: true });
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  const child = spawn(nodeBinary(), [cli, 'collector', '--listen', '127.0.0.1:0', '--token-file', tokenFile, '--no-kubernetes', ...(opts.args ?? [])], {
    cwd: join(dir, 'cwd'),
    env: { ...process.env, CONNTRAIL_TOKEN: '', TMPDIR: join(dir, 'tmp') },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Record<string, unknown>[] = [];
  let raw = '';
  child.stdout.on('data', (d: Buffer) => (raw += d.toString()));
  child.stderr.on('data', (d: Buffer) => (raw += d.toString()));
  collectJsonLines(child.stdout, lines);
  let exited = false;
  child.once('exit', () => (exited = true));
  const listening = await waitFor('collector listening', () => lines.find((l) => l.msg === 'collector listening') ?? (exited ? Promise.reject(new Error(`collector exited: ${raw}`)) : null), 15_000);
  const port = (listening.listen as { port: number }).port;
  return {
    child,
    port,
    token,
    lines,
    dir,
    output: () => raw,
    exited: () => exited,
    async stop() {
      if (!exited) {
        child.kill('SIGKILL');
        await new Promise((r) => (exited ? r(null) : child.once('exit', r)));
      }
      if (opts.dir === undefined) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Writes `bytes` on a fresh connection and returns what came back before the server closed it (or `waitMs` passed). */
export function rawHttp(port: number, bytes: string | Buffer, waitMs = 3_000): Promise<{ text: string; status: number | null; closedByServer: boolean }> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let text = '';
    let closedByServer = false;
    const timer = setTimeout(() => s.destroy(), waitMs);
    s.on('data', (d: Buffer) => (text += d.toString('latin1')));
    s.on('end', () => (closedByServer = true));
    s.on('error', () => undefined);
    s.on('close', () => {
      clearTimeout(timer);
      const m = /^HTTP\/1\.[01] (\d{3})/.exec(text);
      resolve({ text, status: m ? Number(m[1]) : null, closedByServer });
    });
    s.write(bytes);
  });
}

/** A GET as a client would send it, with the token. */
export const requestBytes = (target: string, token: string | null, extra = ''): string =>
  `GET ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\n${token === null ? '' : `Authorization: Bearer ${token}\r\n`}${extra}Connection: close\r\n\r\n`;

/** The body of an HTTP answer read with rawHttp (Content-Length or chunked). */
export function httpBody(text: string): string {
  const i = text.indexOf('\r\n\r\n');
  if (i < 0) return '';
  const head = text.slice(0, i).toLowerCase();
  const body = text.slice(i + 4);
  if (!head.includes('transfer-encoding: chunked')) return Buffer.from(body, 'latin1').toString('utf8');
  let out = '';
  let rest = body;
  for (;;) {
    const nl = rest.indexOf('\r\n');
    if (nl < 0) break;
    const n = parseInt(rest.slice(0, nl), 16);
    if (!(n > 0)) break;
    out += rest.slice(nl + 2, nl + 2 + n);
    rest = rest.slice(nl + 2 + n + 2);
  }
  return Buffer.from(out, 'latin1').toString('utf8');
}

/**
 * A WebSocket client spoken by hand over a raw socket: it completes the
 * upgrade, then sends whatever frames it is told to (masked, as a client
 * must, unless told otherwise), and never answers a ping unless asked to.
 * That is a half-open peer on demand.
 */
export class RawWs {
  readonly socket: Socket;
  /** Text frames the server sent. */
  readonly received: string[] = [];
  closeCode: number | null = null;
  closed = false;
  pings = 0;
  #buf = Buffer.alloc(0);
  #upgraded = false;
  /** Pongs go back as a live peer's would, until goSilent. */
  answerPings = true;

  private constructor(socket: Socket) {
    this.socket = socket;
  }

  /** Resolves with the client once upgraded, or with the HTTP status the server refused with. */
  static open(port: number, token: string | null, opts: { path?: string; authScheme?: string; protocol?: string } = {}): Promise<RawWs | { refused: number }> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1');
      const ws = new RawWs(socket);
      const key = randomBytes(16).toString('base64');
      socket.on('error', () => undefined);
      socket.on('close', () => (ws.closed = true));
      let head = '';
      const onData = (d: Buffer) => {
        if (ws.#upgraded) return ws.#onFrames(d);
        head += d.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1] ?? 0);
        if (status !== 101) {
          socket.destroy();
          return resolve({ refused: status });
        }
        const accept = createHash('sha1').update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`).digest('base64');
        if (!head.toLowerCase().includes(`sec-websocket-accept: ${accept.toLowerCase()}`)) return reject(new Error(`bad upgrade answer: ${head}`));
        ws.#upgraded = true;
        const rest = Buffer.from(head.slice(end + 4), 'latin1');
        resolve(ws);
        if (rest.length > 0) ws.#onFrames(rest);
      };
      socket.on('data', onData);
      socket.on('close', () => resolve({ refused: 0 }));
      socket.write(
        `GET ${opts.path ?? '/'} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ${opts.protocol ?? SUBPROTOCOL}\r\n${token === null ? '' : `Authorization: ${opts.authScheme ?? 'Bearer'} ${token}\r\n`}\r\n`,
      );
    });
  }

  /** Sends one frame: opcode 1 text, 2 binary, 8 close, 9 ping, 10 pong; `mask: false` breaks the protocol on purpose. */
  frame(opcode: number, payload: Buffer | string, opts: { fin?: boolean; mask?: boolean; rsv?: number } = {}): void {
    if (this.closed) return;
    const data = typeof payload === 'string' ? Buffer.from(payload) : payload;
    const mask = opts.mask ?? true;
    const len = data.length;
    const head: number[] = [((opts.fin ?? true) ? 0x80 : 0) | ((opts.rsv ?? 0) << 4) | (opcode & 0x0f)];
    const m = mask ? 0x80 : 0;
    if (len < 126) head.push(m | len);
    else if (len < 65536) head.push(m | 126, len >> 8, len & 255);
    else {
      head.push(m | 127, 0, 0, 0, 0);
      head.push((len >>> 24) & 255, (len >>> 16) & 255, (len >>> 8) & 255, len & 255);
    }
    let body = data;
    const parts: Buffer[] = [Buffer.from(head)];
    if (mask) {
      const key = randomBytes(4);
      body = Buffer.alloc(len);
      for (let i = 0; i < len; i++) body[i] = (data[i] ?? 0) ^ (key[i & 3] ?? 0);
      parts.push(key);
    }
    parts.push(body);
    this.socket.write(Buffer.concat(parts));
  }

  send(text: string): void {
    this.frame(1, text);
  }

  json(msg: unknown): void {
    this.send(JSON.stringify(msg));
  }

  /** Stops reading: the kernel buffers fill and nothing is answered, as with a peer that vanished. */
  goSilent(): void {
    this.answerPings = false;
    this.socket.pause();
  }

  end(): void {
    this.socket.destroy();
  }

  #onFrames(d: Buffer): void {
    this.#buf = Buffer.concat([this.#buf, d]);
    for (;;) {
      const b = this.#buf;
      if (b.length < 2) return;
      const opcode = (b[0] ?? 0) & 0x0f;
      let len = (b[1] ?? 0) & 0x7f;
      let off = 2;
      if (len === 126) {
        if (b.length < 4) return;
        len = b.readUInt16BE(2);
        off = 4;
      } else if (len === 127) {
        if (b.length < 10) return;
        len = Number(b.readBigUInt64BE(2));
        off = 10;
      }
      if (b.length < off + len) return;
      const payload = b.subarray(off, off + len);
      this.#buf = b.subarray(off + len);
      if (opcode === 1) this.received.push(payload.toString());
      else if (opcode === 8) {
        this.closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        this.socket.end();
      } else if (opcode === 9) {
        this.pings++;
        if (this.answerPings) this.frame(10, Buffer.from(payload));
      }
    }
  }
}
