// The agent's only door to the node: run a fixed command or read a file.
// Everything above it is pure, so tests and `replay` swap in recorded text.
// The agent never writes: nothing here can change iptables, IPVS, conntrack
// or sysctls.
import { execFile } from 'node:child_process';
import { closeSync, openSync, readdirSync, readSync } from 'node:fs';
import { ConntrailError } from '../contract/errors.ts';

export interface CommandOutput {
  readonly stdout: string;
  readonly stderr: string;
}

export interface HostIO {
  /** Runs argv (no shell). Rejects with TOOL_MISSING or SOURCE_FAILED. */
  run(argv: readonly string[], options?: { timeoutMs?: number }): Promise<CommandOutput>;
  /** Reads a whole file. Rejects with SOURCE_UNAVAILABLE when it does not exist. */
  readFile(path: string): Promise<string>;
  /** Lists a directory; [] when it does not exist. */
  listDir(path: string): Promise<readonly string[]>;
}

/** 256 MiB: a 250k-entry conntrack table through `conntrack -L` is about 60 MiB. */
const MAX_OUTPUT_BYTES = 256 * 1024 * 1024;

export function createHostIO(): HostIO {
  return {
    run(argv, options = {}) {
      const [cmd, ...args] = argv;
      if (cmd === undefined) return Promise.reject(new ConntrailError('BAD_CONFIG', 'empty command'));
      return new Promise((resolve, reject) => {
        execFile(
          cmd,
          args,
          { timeout: options.timeoutMs ?? 5_000, maxBuffer: MAX_OUTPUT_BYTES, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } },
          (err, stdout, stderr) => {
            if (err === null) return resolve({ stdout, stderr });
            const code = (err as NodeJS.ErrnoException).code;
            if (code === 'ENOENT') return reject(new ConntrailError('TOOL_MISSING', `${cmd} is not installed`, { cause: err }));
            const why = err.killed ? `timed out after ${options.timeoutMs ?? 5_000} ms` : `exited with ${String(code)}`;
            const detail = stderr.trim().split('\n').slice(-3).join(' | ');
            reject(new ConntrailError('SOURCE_FAILED', `${argv.join(' ')} ${why}${detail ? `: ${detail}` : ''}`, { cause: err }));
          },
        );
      });
    },
    readFile(path) {
      try {
        return Promise.resolve(readProcFile(path));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return Promise.reject(new ConntrailError('SOURCE_UNAVAILABLE', `${path} does not exist on this node`, { cause: err }));
        return Promise.reject(new ConntrailError('SOURCE_FAILED', `cannot read ${path}: ${(err as Error).message}`, { cause: err }));
      }
    },
    listDir(path) {
      try {
        return Promise.resolve(readdirSync(path));
      } catch {
        return Promise.resolve([]);
      }
    },
  };
}

/**
 * procfs files report size 0 and the kernel fills at most one page per read()
 * (LAB-NOTES), so the read loop, not the buffer, is the cost. A synchronous
 * loop matches `cat`; libuv's async readFile would add a thread hop per page.
 */
function readProcFile(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const chunks: Buffer[] = [];
    let total = 0;
    let buf = Buffer.allocUnsafe(1 << 20);
    let used = 0;
    for (;;) {
      if (used === buf.length) {
        chunks.push(buf);
        buf = Buffer.allocUnsafe(1 << 20);
        used = 0;
      }
      const n = readSync(fd, buf, used, buf.length - used, null);
      if (n === 0) break;
      used += n;
      total += n;
      if (total > MAX_OUTPUT_BYTES) throw new ConntrailError('SOURCE_FAILED', `${path} is larger than ${MAX_OUTPUT_BYTES} bytes`);
    }
    chunks.push(buf.subarray(0, used));
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    closeSync(fd);
  }
}
