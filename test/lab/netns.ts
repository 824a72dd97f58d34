// A network-namespace lab: owns every namespace and long-running process it
// creates, and removes them all at teardown. Everything runs through argv
// arrays (`spawn`, never a shell). Commands inside a namespace go through
// `ip netns exec`, which setns()es into /run/netns/NAME and then execvp()s the
// command, so the pid we hold is the command itself (kill reaches it).
import { execFileSync, spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Outcome of one command. `code` is the exit status (-1 when killed by a signal). */
export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
  readonly code: number;
}

export interface ExecOptions {
  /** Kill the command after this long (default 10 s). Every command is bounded. */
  readonly timeoutMs?: number;
  /** Throw on a non-zero exit (default true). */
  readonly check?: boolean;
  /** Written to the command's stdin, then stdin is closed (iptables-restore, nft -f -). */
  readonly input?: string;
}

/** A command that failed or timed out; the message names the command and quotes its stderr. */
export class LabCommandError extends Error {
  readonly argv: readonly string[];
  readonly result: ExecResult;
  constructor(argv: readonly string[], result: ExecResult, reason: string) {
    const stderr = result.stderr.trim();
    super(`${reason}: ${argv.join(' ')}${stderr ? `\n${stderr}` : ''}`);
    this.name = 'LabCommandError';
    this.argv = argv;
    this.result = result;
  }
}

// Where root's tools live on Debian even when PATH lacks the sbin directories
// (vitest started from a user shell through sudo -E, for example).
const EXTRA_BIN_DIRS = ['/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/local/bin', '/usr/bin', '/bin'];

/** Absolute path of a command found on PATH or in the sbin directories, or undefined. */
export function findTool(name: string): string | undefined {
  if (name.includes('/')) return name;
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter).filter(Boolean), ...EXTRA_BIN_DIRS];
  for (const dir of dirs) {
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here; keep looking
    }
  }
  return undefined;
}

/** The Debian package that provides each command the lab runs. */
const TOOL_PACKAGES: Readonly<Record<string, string>> = {
  ip: 'iproute2',
  iptables: 'iptables',
  'iptables-restore': 'iptables',
  'iptables-save': 'iptables',
  nft: 'nftables',
  conntrack: 'conntrack',
  sysctl: 'procps',
  // IPVS-mode nodes keep kube-proxy's Service addresses in ipsets.
  ipset: 'ipset',
};

/**
 * Throws an Error naming exactly what stops the lab from running here: not
 * root, a missing command (with the Debian package that provides it), or a
 * kernel/container that refuses to create a network namespace. Lab tests call
 * it first and fail with this message: they never skip. `env` replaces the
 * uid and the command lookup (for testing the messages).
 */
export function assertLabPrerequisites(env: { readonly uid?: number | undefined; readonly findTool?: (name: string) => string | undefined } = {}): void {
  const problems: string[] = [];
  const uid = 'uid' in env ? env.uid : process.getuid?.();
  const lookup = env.findTool ?? findTool;
  if (uid !== 0) problems.push(`lab tests need root (network namespaces, netfilter): running as uid ${uid ?? 'unknown'}; run them as root`);
  const missing = Object.keys(TOOL_PACKAGES).filter((tool) => lookup(tool) === undefined);
  if (missing.length > 0) {
    const packages = [...new Set(missing.map((tool) => TOOL_PACKAGES[tool]))].join(' ');
    problems.push(`missing commands: ${missing.join(', ')} (install with: apt-get install ${packages}, or run npm run setup)`);
  }
  const ip = lookup('ip');
  if (uid === 0 && ip !== undefined) {
    const probe = `ctlab-probe-${randomBytes(3).toString('hex')}`;
    try {
      execFileSync(ip, ['netns', 'add', probe], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 5_000 });
      execFileSync(ip, ['netns', 'del', probe], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 5_000 });
    } catch (err) {
      const stderr = err instanceof Error && 'stderr' in err ? String(err.stderr).trim() : String(err);
      problems.push(`cannot create a network namespace with \`ip netns add\` (a container without CAP_SYS_ADMIN, or a kernel without CONFIG_NET_NS?): ${stderr}`);
    }
  }
  if (problems.length > 0) throw new Error(`namespace lab prerequisites not met:\n- ${problems.join('\n- ')}`);
}

const MAX_OUTPUT_BYTES = 64 * 1024 * 1024;

/** Runs one command with a hard timeout and bounded output; never rejects for a non-zero exit. */
export function runCommand(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult & { timedOut: boolean }> {
  const timeoutMs = opts.timeoutMs ?? 10_000;
  return new Promise((resolve, reject) => {
    let child: ChildProcess;
    try {
      child = spawnChild(file, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    const out: Buffer[] = [];
    const errOut: Buffer[] = [];
    let bytes = 0;
    let timedOut = false;
    const keep = (into: Buffer[]) => (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes <= MAX_OUTPUT_BYTES) into.push(chunk);
    };
    child.stdout?.on('data', keep(out));
    child.stderr?.on('data', keep(errOut));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${file}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(errOut).toString('utf8'),
        code: code ?? (signal ? -1 : 0),
        timedOut,
      });
    });
    // A command that exits before reading stdin makes the write fail with EPIPE; its exit status tells the story.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}

const MAX_KEPT_LINES = 100_000;

/** A long-running command inside a namespace: its stdout lines are kept and can be awaited. */
export class LabProcess {
  readonly ns: string;
  readonly argv: readonly string[];
  readonly lines: string[] = [];
  /** Resolves once the process has exited, however it ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #child: ChildProcess;
  #stderr = '';
  #partial = '';
  #listeners = new Set<(line: string) => void>();
  #done = false;

  constructor(ns: string, file: string, argv: readonly string[]) {
    this.ns = ns;
    this.argv = argv;
    // stdin stays an open pipe: the traffic script exits when it closes, so a
    // crashed test runner does not leave servers behind in a namespace.
    this.#child = spawnChild(file, argv, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.#child.stdin?.on('error', () => undefined);
    this.#child.stdout?.setEncoding('utf8');
    this.#child.stderr?.setEncoding('utf8');
    this.#child.stdout?.on('data', (chunk: string) => this.#onData(chunk));
    this.#child.stderr?.on('data', (chunk: string) => {
      if (this.#stderr.length < 64 * 1024) this.#stderr += chunk;
    });
    this.exited = new Promise((resolve) => {
      this.#child.on('error', (err) => {
        this.#stderr += `\n${err.message}`;
        this.#done = true;
        resolve({ code: -1, signal: null });
      });
      this.#child.on('close', (code, signal) => {
        if (this.#partial) this.#emit(this.#partial);
        this.#partial = '';
        this.#done = true;
        resolve({ code, signal });
      });
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  get stderr(): string {
    return this.#stderr;
  }

  get running(): boolean {
    return !this.#done;
  }

  /** Calls `cb` for every later stdout line; returns the unsubscribe function. */
  onLine(cb: (line: string) => void): () => void {
    this.#listeners.add(cb);
    return () => this.#listeners.delete(cb);
  }

  /** The first stdout line (already seen or later) that satisfies `pred`; rejects after `timeoutMs` or if the process exits first. */
  waitForLine(what: string, pred: (line: string) => boolean, timeoutMs: number): Promise<string> {
    const seen = this.lines.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        off();
        clearTimeout(timer);
        reject(new Error(`${why} waiting for ${what} from \`${this.argv.join(' ')}\` in ${this.ns}; stdout so far:\n${this.lines.slice(-20).join('\n')}\nstderr:\n${this.#stderr.trim()}`));
      };
      const off = this.onLine((line) => {
        if (!pred(line)) return;
        off();
        clearTimeout(timer);
        resolve(line);
      });
      const timer = setTimeout(() => fail(`timed out after ${timeoutMs} ms`), timeoutMs);
      void this.exited.then(() => {
        const late = this.lines.find(pred);
        if (late !== undefined) {
          off();
          clearTimeout(timer);
          resolve(late);
        } else fail('process exited');
      });
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. Idempotent. */
  async stop(graceMs = 1_000): Promise<void> {
    if (this.#done) return;
    this.#child.kill('SIGTERM');
    const killer = setTimeout(() => this.#child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(killer);
  }

  #onData(chunk: string): void {
    const parts = (this.#partial + chunk).split('\n');
    this.#partial = parts.pop() ?? '';
    for (const line of parts) this.#emit(line);
  }

  #emit(line: string): void {
    if (this.lines.length < MAX_KEPT_LINES) this.lines.push(line);
    for (const cb of [...this.#listeners]) cb(line);
  }
}

// Logical names become part of a namespace name and of sysctl keys: keep them plain.
const LOGICAL_NAME = /^[a-z0-9][a-z0-9-]{0,39}$/;
// IFNAMSIZ is 16 including the NUL; '/' and whitespace are refused by the kernel, ':' and '.' confuse tools.
const IFNAME = /^[A-Za-z0-9_-]{1,15}$/;

export function assertInterfaceName(name: string): void {
  if (!IFNAME.test(name)) throw new Error(`interface name ${JSON.stringify(name)} is not 1-15 characters of [A-Za-z0-9_-] (IFNAMSIZ)`);
}

/**
 * One lab: a unique prefix, the namespaces created under it and the processes
 * started in them. Methods take the logical namespace name (`node-1`); the
 * real name is `<prefix>-node-1` (see `netns()`), so parallel test files never
 * collide. `teardown()` is idempotent and safe after a half-built setup.
 */
export class Lab {
  /** e.g. `ctlab-3fa9c1`: every namespace of this lab starts with it and a dash. */
  readonly prefix: string;
  #namespaces = new Map<string, string>();
  #processes = new Set<LabProcess>();
  #tornDown = false;
  #ip: string;

  constructor(opts: { prefix?: string } = {}) {
    this.prefix = opts.prefix ?? `ctlab-${randomBytes(3).toString('hex')}`;
    this.#ip = findTool('ip') ?? 'ip';
  }

  /** Real `ip netns` name of a namespace this lab created. */
  netns(name: string): string {
    const real = this.#namespaces.get(name);
    if (real === undefined) throw new Error(`namespace ${JSON.stringify(name)} is not part of lab ${this.prefix}`);
    return real;
  }

  /** Logical names of the live namespaces, in creation order. */
  namespaces(): string[] {
    return [...this.#namespaces.keys()];
  }

  /** Creates `<prefix>-<name>` with loopback up; returns the real name. */
  async addNamespace(name: string): Promise<string> {
    if (this.#tornDown) throw new Error(`lab ${this.prefix} has been torn down`);
    if (!LOGICAL_NAME.test(name)) throw new Error(`namespace name ${JSON.stringify(name)} must match ${LOGICAL_NAME}`);
    if (this.#namespaces.has(name)) throw new Error(`namespace ${name} already exists in lab ${this.prefix}`);
    const real = `${this.prefix}-${name}`;
    await this.#host(['netns', 'add', real]);
    // Recorded before anything else can fail, so teardown deletes it.
    this.#namespaces.set(name, real);
    await this.ip(name, ['link', 'set', 'lo', 'up']);
    return real;
  }

  /** Stops the processes running in the namespace, then deletes it. */
  async deleteNamespace(name: string): Promise<void> {
    const real = this.netns(name);
    await Promise.all([...this.#processes].filter((p) => p.ns === name).map((p) => this.#stopProcess(p)));
    await this.#killStragglers(real);
    await this.#host(['netns', 'del', real]);
    this.#namespaces.delete(name);
  }

  /** `ip -n NS ARGS` (no mount namespace needed, cheaper than exec). */
  ip(ns: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return this.#run(this.#ip, ['-n', this.netns(ns), ...args], opts);
  }

  /**
   * A veth pair whose ends are created directly inside the two namespaces
   * (`ip link add … netns A type veth peer … netns B`), so the names only need
   * to be unique inside each namespace, never in the host's. Both ends are set up.
   */
  async veth(nsA: string, ifA: string, nsB: string, ifB: string, opts: { macA?: string; macB?: string } = {}): Promise<void> {
    assertInterfaceName(ifA);
    assertInterfaceName(ifB);
    await this.#run(this.#ip, [
      'link', 'add', ifA, 'netns', this.netns(nsA), ...(opts.macA ? ['address', opts.macA] : []),
      'type', 'veth', 'peer', 'name', ifB, 'netns', this.netns(nsB), ...(opts.macB ? ['address', opts.macB] : []),
    ]);
    await Promise.all([this.ip(nsA, ['link', 'set', ifA, 'up']), this.ip(nsB, ['link', 'set', ifB, 'up'])]);
  }

  /** A Linux bridge in `ns`, up unless `{ up: false }` (kube-ipvs0 stays down). */
  async bridge(ns: string, name: string, opts: { up?: boolean } = {}): Promise<void> {
    assertInterfaceName(name);
    await this.ip(ns, ['link', 'add', name, 'type', 'bridge']);
    if (opts.up ?? true) await this.ip(ns, ['link', 'set', name, 'up']);
  }

  /** Runs argv inside the namespace (`ip netns exec NS argv…`); throws a LabCommandError unless `{ check: false }`. */
  exec(ns: string, argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const [cmd, ...rest] = argv;
    if (cmd === undefined) throw new Error('exec needs a command');
    return this.#run(this.#ip, ['netns', 'exec', this.netns(ns), findTool(cmd) ?? cmd, ...rest], opts);
  }

  /** Starts a long-running command inside the namespace; it is stopped at teardown (or when its namespace is deleted). */
  spawn(ns: string, argv: readonly string[]): LabProcess {
    if (this.#tornDown) throw new Error(`lab ${this.prefix} has been torn down`);
    const [cmd, ...rest] = argv;
    if (cmd === undefined) throw new Error('spawn needs a command');
    const proc = new LabProcess(ns, this.#ip, ['netns', 'exec', this.netns(ns), findTool(cmd) ?? cmd, ...rest]);
    this.#processes.add(proc);
    void proc.exited.then(() => this.#processes.delete(proc));
    return proc;
  }

  /**
   * Writes one sysctl inside the namespace only: /proc/sys/net shows the
   * network namespace of the process that opens it, and `sysctl` runs inside
   * `ip netns exec`.
   */
  async sysctl(ns: string, key: string, value: string | number): Promise<void> {
    await this.sysctls(ns, { [key]: value });
  }

  /** Several sysctls in one `sysctl -w` run, in the given order. */
  async sysctls(ns: string, entries: Readonly<Record<string, string | number>>): Promise<void> {
    const args = Object.entries(entries).map(([k, v]) => `${k}=${v}`);
    if (args.length > 0) await this.exec(ns, ['sysctl', '-q', '-w', ...args]);
  }

  /** Stops every process, then deletes every namespace this lab created. Idempotent; reports all failures at once. */
  async teardown(): Promise<void> {
    this.#tornDown = true;
    const errors: unknown[] = [];
    await Promise.all([...this.#processes].map((p) => this.#stopProcess(p).catch((err: unknown) => errors.push(err))));
    for (const [name, real] of [...this.#namespaces].reverse()) {
      try {
        await this.#killStragglers(real);
        const res = await this.#run(this.#ip, ['netns', 'del', real], { check: false });
        if (res.code !== 0 && !/No such file/.test(res.stderr)) throw new LabCommandError(['ip', 'netns', 'del', real], res, 'cannot delete namespace');
        this.#namespaces.delete(name);
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, `lab ${this.prefix} teardown left ${errors.length} problem(s): ${errors.map(String).join('; ')}`);
  }

  async #stopProcess(p: LabProcess): Promise<void> {
    await p.stop();
    this.#processes.delete(p);
  }

  // A namespace outlives `ip netns del` while any process still runs in it (its
  // veths and addresses too), so whatever is left inside one of ours is killed.
  async #killStragglers(real: string): Promise<void> {
    const res = await this.#run(this.#ip, ['netns', 'pids', real], { check: false });
    for (const pid of res.stdout.split(/\s+/).filter(Boolean).map(Number)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  #host(args: readonly string[]): Promise<ExecResult> {
    return this.#run(this.#ip, args, {});
  }

  async #run(file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const res = await runCommand(file, args, opts);
    const argv = [file, ...args];
    const result: ExecResult = { stdout: res.stdout, stderr: res.stderr, code: res.code };
    if (res.timedOut) throw new LabCommandError(argv, result, `command timed out after ${opts.timeoutMs ?? 10_000} ms`);
    if ((opts.check ?? true) && res.code !== 0) throw new LabCommandError(argv, result, `command failed (exit ${res.code})`);
    return result;
  }
}
