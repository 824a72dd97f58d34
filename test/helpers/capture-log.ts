import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';

export interface CapturedLog {
  readonly log: Logger;
  readonly lines: Record<string, unknown>[];
  find(msg: string | RegExp): Record<string, unknown> | undefined;
}

/** A real pino logger whose JSON lines land in an array, for asserting what a person tailing the log would see. */
export function captureLog(): CapturedLog {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const log = pino({ level: 'debug' }, stream);
  return {
    log,
    lines,
    find: (msg) => lines.find((l) => (typeof msg === 'string' ? l.msg === msg : msg.test(String(l.msg)))),
  };
}

export async function waitFor<T>(what: string, probe: () => T | undefined | null | false | Promise<T | undefined | null | false>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A process's JSON log lines, as they arrive on `stream`, into `lines` (a line that is not JSON is kept as `{ unparsed }`). */
export function collectJsonLines(stream: NodeJS.ReadableStream | null | undefined, lines: Record<string, unknown>[]): void {
  let buf = '';
  stream?.on('data', (d: Buffer) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        lines.push({ unparsed: line });
      }
    }
  });
}
