// The agent's only door to the node: run a fixed command or read a file.
// Everything above it is pure, so tests and `replay` swap in recorded text.
// The agent never writes: nothing here can change iptables, IPVS, conntrack
// or sysctls.
import { execFile } from 'node:child_process';
import { closeSync, constants, openSync, readdirSync, readSync } from 'node:fs';
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
  /**
   * Reads a whole file and hands its bytes to `consume`, synchronously: the
   * bytes live in a buffer the next read reuses (no 15 MB string a second for
   * conntrack), so they must not be kept.
   */
  readFileWith<T>(path: string, consume: (bytes: Buffer) => T): Promise<T>;
  /**
   * Reads a file of lines in pieces, each made of whole lines (valid only
   * during the call): a 250k-entry conntrack table need never sit in memory
   * at once.
   */
  readLinesWith(path: string, consume: (lines: Buffer) => void): Promise<void>;
  /** Lists a directory; [] when it does not exist. */
  listDir(path: string): Promise<readonly string[]>;
  /**
   * Reads the kernel log device (/dev/kmsg) from its oldest record to its
   * end: one record per read(), without blocking and without taking anything
   * away from other readers. Rejects with SOURCE_UNAVAILABLE when the device
   * is absent (a container without it mounted) or this process may not read
   * it (EPERM: no CAP_SYSLOG where kernel.dmesg_restrict=1).
   */
  readKmsg(path: string): Promise<string>;
  /** When a reading is taken (ms since the epoch): the wall clock live, the recording's time in replay. */
  now(): number;
}

/** 256 MiB: a 250k-entry conntrack table through `conntrack -L` is about 60 MiB. */
const MAX_OUTPUT_BYTES = 256 * 1024 * 1024;

export function createHostIO(): HostIO {
  // One read buffer for the agent's life: a 250k-entry conntrack read is ~40 MB,
  // and fresh buffers every second would sit as external memory until a GC.
  const reader = createProcReader();
  const lines = createLineReader();
  const kmsg = createKmsgReader();
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
      return this.readFileWith(path, (b) => b.toString('latin1'));
    },
    readFileWith(path, consume) {
      try {
        return Promise.resolve(consume(reader.read(path)));
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return Promise.reject(new ConntrailError('SOURCE_UNAVAILABLE', `${path} does not exist on this node`, { cause: err }));
        return Promise.reject(new ConntrailError('SOURCE_FAILED', `cannot read ${path}: ${(err as Error).message}`, { cause: err }));
      }
    },
    readLinesWith(path, consume) {
      try {
        lines.read(path, consume);
        return Promise.resolve();
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return Promise.reject(new ConntrailError('SOURCE_UNAVAILABLE', `${path} does not exist on this node`, { cause: err }));
        return Promise.reject(new ConntrailError('SOURCE_FAILED', `cannot read ${path}: ${(err as Error).message}`, { cause: err }));
      }
    },
    readKmsg(path) {
      try {
        return Promise.resolve(kmsg.read(path));
      } catch (err) {
        if (err instanceof ConntrailError) return Promise.reject(err);
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'ENOENT') return Promise.reject(new ConntrailError('SOURCE_UNAVAILABLE', `${path} does not exist here (in a container it must be mounted from the host)`, { cause: err }));
        if (code === 'EPERM' || code === 'EACCES')
          return Promise.reject(new ConntrailError('SOURCE_UNAVAILABLE', `cannot read ${path}: ${code} (the kernel log needs CAP_SYSLOG where kernel.dmesg_restrict=1)`, { cause: err }));
        return Promise.reject(new ConntrailError('SOURCE_FAILED', `cannot read ${path}: ${(err as Error).message}`, { cause: err }));
      }
    },
    now: () => Date.now(),
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
 * The buffer grows to the largest file read and is reused.
 */
function createProcReader(): { read(path: string): Buffer } {
  let buf = Buffer.allocUnsafe(1 << 20);
  return {
    read(path) {
      const fd = openSync(path, 'r');
      try {
        let used = 0;
        for (;;) {
          if (buf.length - used < 65_536) {
            if (buf.length >= MAX_OUTPUT_BYTES) throw new ConntrailError('SOURCE_FAILED', `${path} is larger than ${MAX_OUTPUT_BYTES} bytes`);
            // Grow in 4 MiB steps, not by doubling: the buffer lives as long as the agent.
            const bigger = Buffer.allocUnsafe(Math.min(buf.length + (4 << 20), MAX_OUTPUT_BYTES));
            buf.copy(bigger, 0, 0, used);
            buf = bigger;
          }
          // A huge count makes sysctl reads fail (the kernel allocates it: ENOMEM); procfs tables give a page per read anyway.
          const n = readSync(fd, buf, used, Math.min(buf.length - used, 1 << 20), null);
          if (n === 0) break;
          used += n;
        }
        return buf.subarray(0, used);
      } finally {
        closeSync(fd);
      }
    },
  };
}

/** 1 MiB pieces; a longer line than that (none in procfs) grows the buffer. */
function createLineReader(): { read(path: string, consume: (lines: Buffer) => void): void } {
  let buf = Buffer.allocUnsafe(1 << 20);
  return {
    read(path, consume) {
      const fd = openSync(path, 'r');
      try {
        let used = 0;
        for (;;) {
          if (used === buf.length) {
            const bigger = Buffer.allocUnsafe(buf.length * 2);
            buf.copy(bigger, 0, 0, used);
            buf = bigger;
          }
          const n = readSync(fd, buf, used, buf.length - used, null);
          if (n === 0) break;
          used += n;
          const lastNewline = buf.lastIndexOf(10, used - 1);
          if (lastNewline < 0) continue;
          consume(buf.subarray(0, lastNewline + 1));
          // The partial last line moves to the front for the next read.
          buf.copy(buf, 0, lastNewline + 1, used);
          used -= lastNewline + 1;
        }
        if (used > 0) consume(buf.subarray(0, used));
      } finally {
        closeSync(fd);
      }
    },
  };
}

/**
 * The kernel log ring is at most 32 MiB (CONFIG_LOG_BUF_SHIFT <= 25); a read
 * that goes past it is the ring refilling as fast as it is read.
 */
const MAX_KMSG_BYTES = 32 * 1024 * 1024;
/** A record's text is at most about 1 KiB plus its dictionary; read() fails with EINVAL if the buffer is smaller than the record. */
const KMSG_RECORD_BYTES = 8 * 1024;
/** EPIPEs in one read before giving up: each skips records the kernel overwrote under us. */
const MAX_KMSG_OVERWRITTEN = 100_000;

/**
 * /dev/kmsg (Documentation/ABI/testing/dev-kmsg): each read() returns exactly
 * one record; a fresh open starts at the oldest record still in the ring; a
 * non-blocking read at the end fails with EAGAIN; EPIPE says the record at
 * our position was overwritten, and the next read goes on from the oldest one
 * left. Reading takes nothing away from other readers.
 */
function createKmsgReader(): { read(path: string): string } {
  const buf = Buffer.allocUnsafe(KMSG_RECORD_BYTES);
  return {
    read(path) {
      const fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
      const parts: string[] = [];
      let total = 0;
      let overwritten = 0;
      try {
        while (total < MAX_KMSG_BYTES && overwritten < MAX_KMSG_OVERWRITTEN) {
          let n: number;
          try {
            n = readSync(fd, buf, 0, buf.length, null);
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code;
            if (code === 'EAGAIN') break;
            if (code === 'EPIPE') {
              overwritten++;
              continue;
            }
            throw err;
          }
          if (n === 0) break;
          parts.push(buf.toString('latin1', 0, n));
          total += n;
        }
      } finally {
        closeSync(fd);
      }
      return parts.join('');
    },
  };
}
