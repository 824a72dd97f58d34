// Issue 9's acceptance on the real kernel: the main job, `npm start`
// (`conntrail local`), started the way a person starts it on a node, here
// inside a lab node's network namespace (`ip netns exec NODE npm start`),
// once with its output in a pipe and once on a pseudo-terminal, where it
// redraws the screen each tick. It must print its API address, show the
// seed's finding as `conntrail logs` renders it within 3 s of the moment the
// fault became provable, list the incident, answer `conntrail incidents` and
// `conntrail bundle` on the address it printed, and quit on Ctrl-C leaving no
// process behind. The clean rollout beside it must show no error at all.
// Needs root: a missing prerequisite fails the test and names it.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { constants as osConstants, hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { GRACE_MS } from '../../collector/detection/detectors/stale-nat.ts';
import { assertLabPrerequisites, findTool, Lab, runCommand } from './netns.ts';
import { cleanRollout, lbHealthCheckDropped, udpRolloutStaleConntrack } from './scenarios.ts';
import type { Attempt } from './traffic.ts';
import { nodeBinary } from './traffic.ts';

const root = new URL('../..', import.meta.url).pathname;
const cli = join(root, 'bin/conntrail.js');
/** The main job must show a finding within this long of the fault becoming provable (issue 9). */
const FINDING_WITHIN_MS = 3_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// --- what the main job printed ------------------------------------------------

/** One finding block as `conntrail logs` renders it, with when its head line reached us. */
interface RenderedFinding {
  readonly at: number;
  readonly head: string;
  readonly level: 'WARN' | 'ERROR';
  readonly kind: string;
  readonly node: string;
  readonly service: string | null;
  /** `tuple`, `endpoint`, `what`, `advice`, `details` … as labelled in the block. */
  readonly fields: Map<string, string>;
  /** The evidence lines (the tools' raw output) under `evidence`. */
  readonly evidence: string[];
}

// `${time} ${LEVEL} ${kind}  ${node}[  ${service}][  repeated ×N (…)]` (collector/log-render.ts).
const FINDING_HEAD = /^(\d{4}-\d\d-\d\dT[\d:.]+Z) (WARN |ERROR) ([a-z][a-z0-9-]*)  (.+)$/;
const FIELD = /^ {2}(tuple|tuples|endpoint|pod|client|what|evidence|advice|details)(?: +(.*))?$/;
// Colours, the redraw's cursor-home and clear-screen.
const ANSI = /\x1b\[[0-9;?]*[A-Za-z]/g;

/**
 * The main job's output as a stream of lines, ANSI sequences and carriage
 * returns removed. On a terminal every redraw repeats the findings; a block
 * is kept once, with the time it first appeared.
 */
class Output {
  readonly lines: { readonly at: number; readonly text: string }[] = [];
  readonly findings: RenderedFinding[] = [];
  readonly #seen = new Map<string, RenderedFinding>();
  #partial = '';
  #current: RenderedFinding | null = null;
  #filling = false;
  raw = '';

  feed(chunk: string, at: number): void {
    if (this.raw.length < 8 * 1024 * 1024) this.raw += chunk;
    const parts = (this.#partial + chunk).split('\n');
    this.#partial = parts.pop() ?? '';
    for (const part of parts) this.#line(part.replace(ANSI, '').replace(/\r/g, ''), at);
  }

  #line(text: string, at: number): void {
    this.lines.push({ at, text });
    const head = FINDING_HEAD.exec(text);
    if (head !== null) {
      const known = this.#seen.get(text);
      if (known !== undefined) {
        this.#current = known;
        this.#filling = false;
        return;
      }
      const [node = '', service] = (head[4] ?? '').split(/ {2}(?=\S)/).filter((p) => !p.startsWith('repeated ×'));
      const f: RenderedFinding = { at, head: text, level: head[2] === 'ERROR' ? 'ERROR' : 'WARN', kind: head[3] ?? '', node, service: service ?? null, fields: new Map(), evidence: [] };
      this.#seen.set(text, f);
      this.findings.push(f);
      this.#current = f;
      this.#filling = true;
      return;
    }
    const current = this.#current;
    if (current === null) return;
    const field = FIELD.exec(text);
    if (field !== null) {
      if (this.#filling) current.fields.set(field[1] ?? '', field[2] ?? '');
    } else if (/^ {4}/.test(text)) {
      // Evidence: a `[time node source]` line, then the raw line indented by six.
      if (this.#filling && /^ {6}/.test(text)) current.evidence.push(text.slice(6));
    } else this.#current = null;
  }

  /** The API address from the header (`API http://127.0.0.1:PORT  (…)`). */
  api(): string | undefined {
    for (const l of this.lines) {
      const m = /^API (http:\/\/[^\s]+)/.exec(l.text);
      if (m?.[1] !== undefined) return m[1];
    }
    return undefined;
  }

  tail(n = 40): string {
    return this.lines.slice(-n).map((l) => l.text).join('\n');
  }
}

// --- processes ----------------------------------------------------------------

interface ProcInfo {
  readonly pid: number;
  readonly ppid: number;
  /** Start time in clock ticks since boot: a pid that comes back with another start time is another process. */
  readonly start: string;
  readonly cmd: string;
}

function readProc(pid: number): ProcInfo | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name is in parentheses and may hold spaces: fields count from the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
    return { pid, ppid: Number(rest[1]), start: rest[19] ?? '', cmd };
  } catch {
    return undefined;
  }
}

function allProcesses(): ProcInfo[] {
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map((d) => readProc(Number(d)))
    .filter((p): p is ProcInfo => p !== undefined);
}

/** Every live descendant of `pid`. */
function descendants(pid: number): ProcInfo[] {
  const all = allProcesses();
  const out: ProcInfo[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const parent = queue.shift();
    for (const p of all) if (p.ppid === parent) {
      out.push(p);
      queue.push(p.pid);
    }
  }
  return out;
}

/** Processes whose network namespace is the lab namespace `real` (`/run/netns/<real>`). */
function processesInNetns(real: string): ProcInfo[] {
  const want = `net:[${statSync(`/run/netns/${real}`).ino}]`;
  return allProcesses().filter((p) => {
    try {
      return readlinkSync(`/proc/${p.pid}/ns/net`) === want;
    } catch {
      return false;
    }
  });
}

// --- the main job ---------------------------------------------------------------

interface Exit {
  readonly code: number | null;
  readonly signal: string | null;
}

interface MainJob {
  readonly how: 'pipe' | 'terminal';
  readonly out: Output;
  /** The process `ip netns exec` became (`npm start`), leader of its own process group. */
  readonly pid: number;
  /** Every process seen under it while it ran (npm, sh, node, the agent's tools). */
  readonly seen: Map<number, ProcInfo>;
  readonly exited: Promise<Exit>;
  running(): boolean;
  /** Ctrl-C: SIGINT to the whole foreground process group (the terminal's line discipline does it for ^C). */
  interrupt(): void;
  /** Last resort at teardown. */
  kill(): void;
}

function childEnv(extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
  // A person's shell: no node name or token unless the test sets one, no inherited log level or colour choice.
  for (const k of ['NODE_NAME', 'CONNTRAIL_TOKEN', 'LOG_LEVEL', 'NO_COLOR', 'FORCE_COLOR']) delete env[k];
  return { ...env, ...extra };
}

function mainJobPrerequisites(): { ip: string; npm: string; tar: string } {
  assertLabPrerequisites();
  const ip = findTool('ip');
  const npm = findTool('npm');
  const tar = findTool('tar');
  if (ip === undefined || npm === undefined || tar === undefined) {
    const missing = [ip === undefined ? 'ip (apt-get install iproute2)' : null, npm === undefined ? 'npm (the main job is `npm start`; apt-get install npm)' : null, tar === undefined ? 'tar (unpacks the bundle; apt-get install tar)' : null];
    throw new Error(`main-job test prerequisites not met: missing ${missing.filter((m) => m !== null).join(', ')}`);
  }
  if (!existsSync(join(root, 'node_modules', '.bin', 'node'))) throw new Error('main-job test prerequisites not met: node_modules/.bin/node (the npm package `node`, Node 24) is missing; run npm run setup');
  return { ip, npm, tar };
}

function watchTree(job: { pid: number; seen: Map<number, ProcInfo>; running(): boolean }): () => void {
  const timer = setInterval(() => {
    if (!job.running()) return;
    for (const p of descendants(job.pid)) if (!job.seen.has(p.pid)) job.seen.set(p.pid, p);
  }, 100);
  return () => clearInterval(timer);
}

/** `ip netns exec NS npm start`, its output in pipes, in a process group of its own (as a shell's job is). */
function startInPipe(ip: string, ns: string, env: Record<string, string>): MainJob {
  const out = new Output();
  const child: ChildProcess = spawn(ip, ['netns', 'exec', ns, 'npm', 'start'], { cwd: root, env: childEnv(env), detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error('npm start did not start');
  const pid = child.pid;
  child.stdout?.setEncoding('utf8');
  child.stderr?.setEncoding('utf8');
  child.stdout?.on('data', (d: string) => out.feed(d, Date.now()));
  let stderr = '';
  child.stderr?.on('data', (d: string) => {
    if (stderr.length < 64 * 1024) stderr += d;
  });
  let done = false;
  const exited = new Promise<Exit>((resolve) => {
    child.on('close', (code, signal) => {
      done = true;
      if (stderr.trim() !== '') out.feed(`\n[stderr]\n${stderr}`, Date.now());
      resolve({ code, signal });
    });
  });
  const job: MainJob = {
    how: 'pipe',
    out,
    pid,
    seen: new Map(),
    exited,
    running: () => !done,
    interrupt: () => process.kill(-pid, 'SIGINT'),
    kill: () => {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
  };
  const stop = watchTree(job);
  void exited.then(stop);
  return job;
}

/** `ip netns exec NS npm start` on a pseudo-terminal: what a person at a terminal sees; ^C is typed. */
async function startOnTerminal(ip: string, ns: string, env: Record<string, string>): Promise<MainJob> {
  let pty: typeof import('node-pty');
  try {
    pty = await import('node-pty');
  } catch (err) {
    throw new Error(`main-job test prerequisites not met: node-pty (a dependency of conntrail) cannot be loaded: ${(err as Error).message}; run npm run setup`);
  }
  const out = new Output();
  const term = pty.spawn(ip, ['netns', 'exec', ns, 'npm', 'start'], { name: 'xterm-256color', cols: 200, rows: 60, cwd: root, env: childEnv({ TERM: 'xterm-256color', ...env }) });
  term.onData((d) => out.feed(d, Date.now()));
  let done = false;
  const exited = new Promise<Exit>((resolve) => {
    term.onExit(({ exitCode, signal }) => {
      done = true;
      const name = signal === undefined || signal === 0 ? null : (Object.entries(osConstants.signals).find(([, n]) => n === signal)?.[0] ?? String(signal));
      resolve({ code: name === null ? exitCode : null, signal: name });
    });
  });
  const job: MainJob = {
    how: 'terminal',
    out,
    pid: term.pid,
    seen: new Map(),
    exited,
    running: () => !done,
    interrupt: () => term.write('\x03'),
    kill: () => {
      try {
        process.kill(-term.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    },
  };
  const stop = watchTree(job);
  void exited.then(stop);
  return job;
}

async function waitUntil<T>(what: string, job: MainJob, probe: () => T | undefined, timeoutMs: number): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = probe();
    if (v !== undefined) return v;
    if (!job.running()) throw new Error(`npm start exited while waiting for ${what}; its output:\n${job.out.tail()}`);
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} from npm start (${job.how}); its output so far:\n${job.out.tail()}`);
    await sleep(20);
  }
}

const findingsText = (job: MainJob): string => JSON.stringify(job.out.findings.map((f) => [f.level, f.kind, f.node, f.service, f.fields.get('tuple'), f.fields.get('endpoint')]));

function waitForFinding(job: MainJob, what: string, pred: (f: RenderedFinding) => boolean, timeoutMs: number): Promise<RenderedFinding> {
  return waitUntil(what, job, () => job.out.findings.find(pred), timeoutMs).catch((err: Error) => {
    throw new Error(`${err.message}\nfindings so far: ${findingsText(job)}`);
  });
}

/**
 * Ctrl-C, then the checks a person would make: it quits promptly, it said it
 * stopped, and nothing it started is left running in the node's namespace.
 */
async function interruptAndCheck(job: MainJob, lab: Lab, ns: string): Promise<Exit> {
  for (const p of descendants(job.pid)) if (!job.seen.has(p.pid)) job.seen.set(p.pid, p);
  job.interrupt();
  const exit = await Promise.race([job.exited, sleep(10_000).then(() => null)]);
  if (exit === null) {
    const left = descendants(job.pid).map((p) => `${p.pid} ${p.cmd}`).join('\n');
    throw new Error(`npm start did not exit within 10 s of Ctrl-C (${job.how}); still running:\n${left}\noutput:\n${job.out.tail()}`);
  }
  // npm re-raises the signal its script's shell ended with, and the shell
  // (dash), having been sent the ^C itself, ends by SIGINT after conntrail
  // exits 0: `npm start` ends as any npm script interrupted by ^C does (the
  // shell shows 130). conntrail's own clean exit is its last line.
  expect(exit.code === 0 || exit.signal === 'SIGINT', `npm start ended with ${JSON.stringify(exit)}`).toBe(true);
  expect(job.out.lines.some((l) => l.text.startsWith('conntrail local stopped')), `no "conntrail local stopped" line; output:\n${job.out.tail()}`).toBe(true);
  expect(job.out.raw).not.toMatch(/Error:|npm error|ERR!|at .+\.ts:\d+:\d+/);
  // The processes seen under it (npm, its shell, node, the samplers' tools) are all gone…
  const alive = [...job.seen.values()].filter((p) => readProc(p.pid)?.start === p.start);
  expect(alive.map((p) => `${p.pid} ${p.cmd}`)).toEqual([]);
  // …and nothing but the lab's own servers runs in the node's namespace.
  const inNs = processesInNetns(lab.netns(ns)).filter((p) => !p.cmd.includes('test/lab/traffic.ts'));
  expect(inNs.map((p) => `${p.pid} ${p.cmd}`)).toEqual([]);
  return exit;
}

// --- the conntrail commands a person runs beside it -------------------------------

interface Listed {
  readonly id: string;
  readonly service: string;
  readonly nodes: string[];
  readonly kinds: string[];
}

/** `conntrail incidents --collector ADDR`, run in the node's namespace (the address is its loopback). */
async function incidents(lab: Lab, ns: string, api: string, env: Record<string, string> = {}): Promise<{ code: number; stdout: string; stderr: string; listed: Listed[] }> {
  const res = await runCommand(findTool('ip') ?? 'ip', ['netns', 'exec', lab.netns(ns), 'env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), nodeBinary(), cli, 'incidents', '--collector', api], { timeoutMs: 15_000 });
  const listed = res.stdout.split('\n').flatMap((line) => {
    // `${id}  ${firstFinding}  ${service}  nodes ${nodes}  ${n} findings (${kinds})`
    const m = /^(\S+) {2}\S+ {2}(.+) {2}nodes (\S+) {2}\d+ findings \((.*)\)$/.exec(line);
    return m === null ? [] : [{ id: m[1] ?? '', service: m[2] ?? '', nodes: (m[3] ?? '').split(','), kinds: (m[4] ?? '').split(', ') }];
  });
  return { code: res.code, stdout: res.stdout, stderr: res.stderr, listed };
}

interface Unpacked {
  readonly dir: string;
  readonly manifest: { files: Record<string, { sha256: string }>; nodes: string[]; incident: string | null };
  text(path: string): string;
  jsonl(path: string): Record<string, unknown>[];
}

/** `conntrail bundle --collector ADDR --incident ID -o FILE`, then the bundle unpacked with tar and its manifest checked file by file. */
async function exportBundle(lab: Lab, ns: string, api: string, id: string, dir: string, env: Record<string, string> = {}): Promise<{ file: string; bundle: Unpacked }> {
  const file = join(dir, `incident-${id}.tar.gz`);
  const res = await runCommand(findTool('ip') ?? 'ip', ['netns', 'exec', lab.netns(ns), 'env', ...Object.entries(env).map(([k, v]) => `${k}=${v}`), nodeBinary(), cli, 'bundle', '--collector', api, '--incident', id, '-o', file], { timeoutMs: 30_000 });
  expect(res.code, `conntrail bundle: ${res.stderr}`).toBe(0);
  expect(res.stderr).toContain(`wrote ${file}`);
  const into = join(dir, `incident-${id}`);
  const untar = await runCommand(findTool('mkdir') ?? 'mkdir', ['-p', into]).then(() => runCommand(findTool('tar') ?? 'tar', ['-xzf', file, '-C', into], { timeoutMs: 15_000 }));
  expect(untar.code, `tar -xzf: ${untar.stderr}`).toBe(0);
  // The manifest sits at the top or in the one directory the archive holds.
  const base = existsSync(join(into, 'manifest.json')) ? into : join(into, readdirSync(into).find((d) => existsSync(join(into, d, 'manifest.json'))) ?? '');
  const manifest = JSON.parse(readFileSync(join(base, 'manifest.json'), 'utf8')) as Unpacked['manifest'];
  for (const [path, { sha256 }] of Object.entries(manifest.files)) expect(createHash('sha256').update(readFileSync(join(base, path))).digest('hex'), `sha256 of ${path}`).toBe(sha256);
  const text = (path: string): string => readFileSync(join(base, path), 'utf8');
  return {
    file,
    bundle: {
      dir: base,
      manifest,
      text,
      jsonl: (path) => text(path).split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>),
    },
  };
}

/** What identifies a finding: the rest (times, evidence) is the sample's. */
const identity = (f: Record<string, unknown>) => ({ finding: f.finding, severity: f.severity, node: f.node, service: f.service, tuple: f.tuple, endpoint: f.endpoint });

/** `conntrail replay BUNDLE`: its finding lines are the bundle's findings.jsonl. */
async function replayMatches(file: string, bundle: Unpacked): Promise<Record<string, unknown>[]> {
  const res = await runCommand(nodeBinary(), [cli, 'replay', file], { timeoutMs: 60_000 });
  const replayed = res.stdout.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => typeof l.finding === 'string');
  const stored = bundle.jsonl('findings.jsonl');
  expect(replayed.map(identity), `conntrail replay ${file}: ${res.stderr}`).toEqual(stored.map(identity));
  // It exits 1 when one of them is an error.
  expect(res.code).toBe(stored.some((f) => f.severity === 'error') ? 1 : 0);
  return replayed;
}

// --- the tests ------------------------------------------------------------------

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function setUp(): { lab: Lab; dir: string; ip: string; track(job: MainJob): MainJob } {
  const { ip } = mainJobPrerequisites();
  const lab = new Lab();
  const dir = mkdtempSync(join(tmpdir(), 'conntrail-main-job-'));
  cleanups.push(async () => {
    await lab.teardown();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    lab,
    dir,
    ip,
    track: (job) => {
      cleanups.push(async () => {
        if (!job.running()) return;
        job.kill();
        await Promise.race([job.exited, sleep(5_000)]);
      });
      return job;
    },
  };
}

/** The node name local takes: $NODE_NAME, unset here, then the hostname (the UTS namespace is the host's). */
const NODE = hostname();

describe('npm start (conntrail local) on a lab node', { timeout: 120_000 }, () => {
  it('seed 003 in IPVS mode, output in a pipe: the health checks from the LB address are shown dropped within 3 s of the first one, listed, exported and replayed', async () => {
    const { lab, dir, ip, track } = setUp();
    const s = lbHealthCheckDropped(lab);
    await s.setup();
    const job = track(startInPipe(ip, lab.netns(s.facts.node), {}));
    const api = await waitUntil('the API address', job, () => job.out.api(), 20_000);
    expect(api).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(job.out.lines.some((l) => l.text === `conntrail local on ${NODE}: watching this node every 1000 ms. Ctrl-C to quit.`)).toBe(true);
    const lb = s.facts.loadBalancer.ip;
    const hcPort = s.facts.healthCheckNodePort;
    const tuple = `tcp ${lb}:- -> ${s.facts.nodeIp}:${hcPort}`;
    // Before any probe: the latent risk (LB address in the local table, accept_local off), a warning.
    const latent = await waitForFinding(job, 'the latent lb-healthcheck-dropped warning', (f) => f.kind === 'lb-healthcheck-dropped' && f.level === 'WARN', 15_000);
    expect(latent).toMatchObject({ node: NODE, service: `TCP ${lb}:80` });
    expect(latent.fields.get('tuple')).toBe(tuple);
    expect(latent.evidence).toContain(`local ${lb} dev kube-ipvs0 table local proto kernel scope host src ${lb} `);
    // in_martian_src is host-wide: an error now would have come from outside this lab.
    expect(job.out.findings.filter((f) => f.level === 'ERROR').map((f) => f.head), 'an error before any probe (in_martian_src is host-wide: martians elsewhere on this host?)').toEqual([]);

    const result = await s.drive();
    const fromLb: Attempt[] = [...result.healthChecks, ...result.healthCheckNodePortProbes.fromLoadBalancer];
    expect(fromLb.map((a) => a.status)).toEqual(fromLb.map(() => 'timeout'));
    // Provable from the first SYN the LB sent from its own address: it is dropped as it arrives, and this detector has no grace.
    const provable = Math.min(...fromLb.map((a) => a.at));
    const f = await waitForFinding(job, 'the lb-healthcheck-dropped error', (x) => x.kind === 'lb-healthcheck-dropped' && x.level === 'ERROR', Math.max(0, provable + FINDING_WITHIN_MS + 2_000 - Date.now()));
    expect(f.at - provable, `shown ${f.at - provable} ms after the first dropped health check (${new Date(provable).toISOString()}): ${f.head} ${f.fields.get('what') ?? ''}`).toBeLessThan(FINDING_WITHIN_MS);
    expect(f.at).toBeGreaterThanOrEqual(provable);
    expect(f).toMatchObject({ node: NODE, service: `TCP ${lb}:80` });
    expect(f.fields.get('tuple')).toBe(tuple);
    // No endpoint: the packets never got past the routing decision.
    expect(f.fields.has('endpoint')).toBe(false);
    expect(f.fields.get('what')).toMatch(new RegExp(`while ${lb.replaceAll('.', '\\.')} \\(.*\\) is a local address here \\(kube-ipvs0\\) and accept_local is off`));
    expect(f.evidence.some((e) => /--match-set KUBE-(NODE-PORT|HEALTH-CHECK)/.test(e))).toBe(true);

    // The main job lists the incident (every 5 s without a terminal)…
    const shown = await waitUntil('the incident in the main job\'s output', job, () => job.out.lines.find((l) => l.at >= f.at && l.text.startsWith('incident ') && l.text.includes(`TCP ${lb}:80`) && l.text.includes('lb-healthcheck-dropped')), 7_000);
    // …and `conntrail incidents` on the address it printed names the node and the kind.
    const listed = await incidents(lab, s.facts.node, api);
    expect(listed.code, listed.stderr).toBe(0);
    const incident = listed.listed.find((i) => i.service === `TCP ${lb}:80`);
    expect(incident, listed.stdout).toBeDefined();
    expect(incident?.nodes).toEqual([NODE]);
    expect(incident?.kinds).toContain('lb-healthcheck-dropped');
    expect(shown.text).toMatch(new RegExp(`^incident ${incident?.id ?? '?'} `));

    const { file, bundle } = await exportBundle(lab, s.facts.node, api, incident?.id ?? '', dir);
    expect(bundle.manifest).toMatchObject({ incident: incident?.id, nodes: [NODE] });
    const stored = bundle.jsonl('findings.jsonl');
    expect(stored.find((x) => x.finding === 'lb-healthcheck-dropped' && x.severity === 'error')).toMatchObject({ node: NODE, tuple: { proto: 'tcp', src: lb, dst: s.facts.nodeIp, dport: hcPort } });
    // The node's timeline holds what proves it: the LB address in the local table, and the health-check port in kube-proxy's ipset.
    const timeline = bundle.text(`timeline/${NODE}.jsonl`);
    expect(timeline).toContain(`local ${lb} dev kube-ipvs0 table local proto kernel scope host src ${lb}`);
    expect(timeline).toContain(`add KUBE-HEALTH-CHECK-NODE-PORT ${hcPort}`);
    expect(timeline).toContain('net.ipv4.conf.all.accept_local = 0');
    const replayed = await replayMatches(file, bundle);
    expect(replayed.some((x) => x.finding === 'lb-healthcheck-dropped' && x.severity === 'error')).toBe(true);

    await interruptAndCheck(job, lab, s.facts.node);
  });

  it('a UDP rollout without kube-proxy\'s conntrack cleanup, on a terminal: the stale NAT is on screen within 3 s of the grace, listed, exported and replayed; Ctrl-C quits', async () => {
    const { lab, dir, ip, track } = setUp();
    const s = udpRolloutStaleConntrack(lab);
    await s.setup();
    // A person who keeps a token in their shell: local requires it on its API, and the CLI takes it from the same variable.
    const token = createHash('sha256').update(lab.prefix).digest('hex').slice(0, 32);
    const job = track(await startOnTerminal(ip, lab.netns(s.facts.node), { CONNTRAIL_TOKEN: token }));
    const api = await waitUntil('the API address on screen', job, () => job.out.api(), 20_000);
    // The screen shows the node's sources being read, with the Service's conntrack entry among them once the client runs.
    await waitUntil('the node connected on screen', job, () => job.out.lines.find((l) => l.text.startsWith(`node ${NODE}  connected`)), 10_000);

    const t = s.facts.tuple;
    const endpoint = `${s.facts.oldEndpoint.ip}:${s.facts.oldEndpoint.port}`;
    const isStale = (x: RenderedFinding) => x.kind === 'stale-nat-to-removed-endpoint' && x.level === 'ERROR';
    const result = await s.drive({
      pinnedMs: 6_000,
      // The client stays pinned until the finding is on screen (bounded; checked below).
      onPinned: async () => {
        await waitForFinding(job, 'the stale NAT error', isStale, 10_000).catch(() => undefined);
      },
    });
    // Provable once kube-proxy's cleanup grace has passed since the rules changed, with the client still sent to the removed pod.
    const unanswered = result.attempts.filter((a) => a.at >= result.oldPodRemovedAt && a.at < (result.cleanupAt ?? Infinity) && a.status !== 'ok');
    expect(unanswered.length).toBeGreaterThanOrEqual(3);
    const provable = Math.max(result.rolloutAt + GRACE_MS, Math.min(...unanswered.map((a) => a.at)));
    const f = job.out.findings.find(isStale);
    expect(f, `no stale-nat error on screen; findings: ${findingsText(job)}\n${job.out.tail()}`).toBeDefined();
    if (f === undefined) return;
    // The finding's own text says when its sample saw the endpoint leave: late sampling and a late detector read differently.
    expect(f.at - provable, `shown ${f.at - provable} ms after the fault was provable (rules changed ${new Date(result.rolloutAt).toISOString()}, provable ${new Date(provable).toISOString()}): ${f.head} ${f.fields.get('what') ?? ''}`).toBeLessThan(FINDING_WITHIN_MS);
    expect(f).toMatchObject({ node: NODE, service: s.facts.service.key });
    expect(f.fields.get('tuple')).toBe(`udp ${t.src}:${t.sport} -> ${t.dst}:${t.dport}`);
    expect(f.fields.get('endpoint')).toBe(endpoint);
    expect(f.fields.get('advice')).toContain(`conntrack -D -p udp --orig-dst ${t.dst} --dst-nat ${s.facts.oldEndpoint.ip}`);

    // On screen, the incident (redrawn each tick).
    await waitUntil('the incident on screen', job, () => job.out.lines.find((l) => l.text.startsWith('incident ') && l.text.includes(s.facts.service.key) && l.text.includes('stale-nat-to-removed-endpoint')), 3_000);
    // Without the token the API refuses; with it (the same variable local read), the incident is listed.
    const refused = await incidents(lab, s.facts.node, api);
    expect(refused.code).toBe(3);
    expect(refused.stderr).toContain('answered 401');
    const listed = await incidents(lab, s.facts.node, api, { CONNTRAIL_TOKEN: token });
    expect(listed.code, listed.stderr).toBe(0);
    const incident = listed.listed.find((i) => i.service === s.facts.service.key);
    expect(incident, listed.stdout).toBeDefined();
    expect(incident?.nodes).toEqual([NODE]);
    expect(incident?.kinds).toContain('stale-nat-to-removed-endpoint');

    const { file, bundle } = await exportBundle(lab, s.facts.node, api, incident?.id ?? '', dir, { CONNTRAIL_TOKEN: token });
    const stored = bundle.jsonl('findings.jsonl');
    expect(stored.find((x) => x.finding === 'stale-nat-to-removed-endpoint')).toMatchObject({ node: NODE, service: s.facts.service.key, tuple: { proto: 'udp', src: t.src, sport: t.sport, dst: t.dst, dport: t.dport }, endpoint });
    // The timeline holds the pinned entry itself, NATed to the removed pod.
    const timeline = bundle.text(`timeline/${NODE}.jsonl`);
    expect(timeline).toMatch(new RegExp(`src=${t.src.replaceAll('.', '\\.')} dst=${t.dst.replaceAll('.', '\\.')} sport=${t.sport} dport=${t.dport} (packets=\\d+ bytes=\\d+ )?src=${s.facts.oldEndpoint.ip.replaceAll('.', '\\.')} dst=${t.src.replaceAll('.', '\\.')} sport=53 dport=${t.sport}`));
    // Nothing of the token in the bundle.
    expect(readFileSync(file).includes(Buffer.from(token))).toBe(false);
    const replayed = await replayMatches(file, bundle);
    expect(replayed.some((x) => x.finding === 'stale-nat-to-removed-endpoint' && x.endpoint === endpoint)).toBe(true);

    await interruptAndCheck(job, lab, s.facts.node);
    // A person typed ^C; the terminal echoed it.
    expect(job.out.raw).toContain('^C');
  });

  it("the same rollout done right (kube-proxy's cleanup a sample after the rules) shows no error and opens no incident", async () => {
    const { lab, ip, track } = setUp();
    const s = cleanRollout(lab);
    await s.setup();
    const job = track(startInPipe(ip, lab.netns(s.facts.node), {}));
    const api = await waitUntil('the API address', job, () => job.out.api(), 20_000);
    // The first summary (every 5 s without a terminal) shows the node sampled.
    await waitUntil('the first summary', job, () => job.out.lines.find((l) => l.text.startsWith(`node ${NODE}  connected`)), 10_000);
    const result = await s.drive();
    expect(result.cleanup).toMatchObject({ kubeProxy: 'after-sync', ran: true });
    expect(result.attempts.some((a) => a.status === 'ok' && a.pod === s.facts.newEndpoint.pod)).toBe(true);
    // Past the stale-NAT grace and a few samples more, up to a summary printed after that: it was watching all along.
    const settled = Date.now() + GRACE_MS + 1_000;
    const summary = await waitUntil('a summary after the rollout settled', job, () => job.out.lines.find((l) => l.at > settled && l.text.startsWith(`node ${NODE}  connected`)), 12_000);
    const seq = Number(/seq (\d+)/.exec(summary.text)?.[1]);
    expect(seq).toBeGreaterThanOrEqual(5);
    const conntrack = job.out.lines.filter((l) => l.at >= summary.at).find((l) => /^ {2}conntrack +\d+ records/.test(l.text));
    expect(Number(/(\d+) records/.exec(conntrack?.text ?? '')?.[1])).toBeGreaterThanOrEqual(1);
    expect(job.out.findings.filter((f) => f.level === 'ERROR').map((f) => f.head)).toEqual([]);
    expect(job.out.lines.filter((l) => l.text.startsWith('incident ')).map((l) => l.text)).toEqual([]);
    const listed = await incidents(lab, s.facts.node, api);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toBe('no incidents\n');
    await interruptAndCheck(job, lab, s.facts.node);
  });
});
