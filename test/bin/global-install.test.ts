// conntrail as an SRE gets it: `npm pack`, then `npm install -g` of the
// tarball into an empty prefix, run with Node.js 22 first on PATH. Node
// strips no types under node_modules, so this passes only if the package
// ships JavaScript; node-pty (a native addon whose install script npm 11
// does not run in a global install) is deleted from the install, so this
// passes only if no client command loads it.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { caseContext, commands, errorCases, judge, root, runTo, SEED_002, type CaseContext } from './cli-cases.ts';

// scripts/setup.sh installs it there; CONNTRAIL_NODE22 names another.
const NODE22 = process.env.CONNTRAIL_NODE22 ?? join(root, '.cache/node22/node_modules/node/bin/node');
const version = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };

let work: string | undefined;
let prefix: string;
let env: NodeJS.ProcessEnv;
let tarball: string;
let ctx: (CaseContext & { close(): Promise<void> }) | undefined;

/** `conntrail ARGS` as the global install runs it: the bin link on PATH, its `#!/usr/bin/env node` finding Node 22. */
const installed = (args: readonly string[], o: { stdin?: string } = {}) => runTo(['conntrail', ...args], { env, ...o });
/** The same command from this checkout, on the Node that runs the tests. */
const checkout = (args: readonly string[], o: { stdin?: string } = {}) => runTo([process.execPath, join(root, 'bin/conntrail.js'), ...args], { env: { ...process.env, NO_COLOR: '1' }, ...o });

async function must(what: string, argv: string[], o: { env?: NodeJS.ProcessEnv; timeoutMs: number }): Promise<string> {
  const ran = await runTo(argv, o);
  if (ran.code !== 0) throw new Error(`${what} (${argv.join(' ')}) ended with ${String(ran.code ?? ran.signal)}:\n${ran.stderr}\n${ran.stdout}`);
  return ran.stdout;
}

// A setup that failed (no Node 22, npm pack or install failing) fails every test with its reason, rather than leaving them skipped.
let setupFailed: unknown = null;
function ready(): void {
  if (setupFailed !== null) throw setupFailed;
}

beforeAll(async () => {
  try {
    await setUp();
  } catch (err) {
    setupFailed = err;
  }
}, 420_000);

async function setUp(): Promise<void> {
  const ran = existsSync(NODE22) ? await runTo([NODE22, '--version']) : null;
  if (ran === null || !ran.stdout.startsWith('v22.'))
    throw new Error(`Node.js 22 is needed at ${NODE22} (found ${ran === null ? 'nothing' : ran.stdout.trim()}): run \`npm run setup\` (scripts/setup.sh installs it there), or name one with CONNTRAIL_NODE22`);
  work = mkdtempSync(join(tmpdir(), 'conntrail-pack-'));
  // A copy of what the package is made from, so that the emit to dist/ never lands in the checkout beside its sources.
  const src = join(work, 'src');
  mkdirSync(src);
  for (const p of ['package.json', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'agent', 'collector', 'contract', 'bin']) cpSync(join(root, p), join(src, p), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(src, 'node_modules'));
  const toolPath = `${join(root, 'node_modules/.bin')}:${process.env.PATH ?? ''}`;
  await must('npm pack', ['npm', 'pack', '--pack-destination', work], { env: { ...process.env, PATH: toolPath }, timeoutMs: 120_000 });
  const packed = readdirSync(work).filter((f) => f.endsWith('.tgz'));
  if (packed.length !== 1) throw new Error(`npm pack left ${JSON.stringify(packed)} in ${work}, not one tarball`);
  tarball = join(work, packed[0] ?? '');
  // Installed by npm running on Node 22, as on an SRE's laptop; dependencies from npm's cache where it has them.
  prefix = join(work, 'prefix');
  env = { ...process.env, PATH: `${dirname(NODE22)}:${join(prefix, 'bin')}:${process.env.PATH ?? ''}`, NO_COLOR: '1' };
  delete env.NODE_OPTIONS;
  await must('npm install -g', ['npm', 'install', '-g', '--prefix', prefix, tarball, '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline'], { env, timeoutMs: 240_000 });
  rmSync(join(prefix, 'lib/node_modules/conntrail/node_modules/node-pty'), { recursive: true, force: true });
  ctx = await caseContext();
}

function context(): CaseContext {
  if (ctx === undefined) throw new Error('no case context: the setup did not finish');
  return ctx;
}

afterAll(async () => {
  await ctx?.close();
  if (work !== undefined) rmSync(work, { recursive: true, force: true });
});

describe('npm pack → npm install -g into an empty prefix → conntrail on Node 22', { timeout: 30_000 }, () => {
  it('ships JavaScript and the bin script, not the TypeScript sources, tests or fixtures', async () => {
    ready();
    const files = (await must('tar -tzf', ['tar', '-tzf', tarball], { timeoutMs: 10_000 })).split('\n').filter((f) => f !== '');
    expect(files).toEqual(expect.arrayContaining(['package/package.json', 'package/README.md', 'package/bin/conntrail.js', 'package/dist/bin/cli.js', 'package/dist/agent/agent.js', 'package/dist/collector/pipeline.js']));
    expect(files.filter((f) => f.endsWith('.ts') || f.startsWith('package/test/') || f.includes('fixtures'))).toEqual([]);
    expect(existsSync(join(prefix, 'lib/node_modules/conntrail/node_modules/node-pty'))).toBe(false);
  });

  it('runs on Node 22: --version, and --help for every command', async () => {
    ready();
    expect((await runTo(['node', '--version'], { env })).stdout).toMatch(/^v22\./);
    expect(await installed(['--version'])).toMatchObject({ code: 0, stdout: `${version.version}\n`, stderr: '' });
    for (const command of commands) {
      const help = await installed([command, '--help']);
      expect(help, `${command} --help`).toMatchObject({ code: 0, stderr: '' });
      expect(help.stdout).toBe((await checkout([command, '--help'])).stdout);
    }
  });

  it('parse prints what the checkout prints', async () => {
    ready();
    const file = join(root, 'test/fixtures/conntrack/lab-conntrack-L.txt');
    const got = await installed(['parse', 'conntrack', file]);
    const want = await checkout(['parse', 'conntrack', file]);
    expect(got.code).toBe(0);
    expect(got.stdout.split('\n').length).toBeGreaterThan(2);
    expect({ stdout: got.stdout, stderr: got.stderr }).toEqual({ stdout: want.stdout, stderr: want.stderr });
  });

  it('logs renders a collector log from standard input as the checkout does', async () => {
    ready();
    const log = readFileSync(join(root, 'test/fixtures/logs/lab-collector.jsonl'), 'utf8');
    const got = await installed(['logs'], { stdin: log });
    expect(got).toMatchObject({ code: 0, stderr: '' });
    expect(got.stdout).toMatch(/ERROR stale-nat-to-removed-endpoint  node-1  kube-system\/kube-dns:dns/);
    expect(got.stdout).toBe((await checkout(['logs'], { stdin: log })).stdout);
  });

  it('replay of seed 002 reports the port-reuse error and exits 1', async () => {
    ready();
    const got = await installed(['replay', SEED_002]);
    expect(got.code, got.stderr).toBe(1);
    const findings = (out: string) => out.split('\n').filter((l) => l.startsWith('{')).map((l) => ({ ...(JSON.parse(l) as Record<string, unknown>), time: undefined }));
    const lines = findings(got.stdout);
    expect(lines).toContainEqual(expect.objectContaining({ finding: 'port-reuse-to-removed-endpoint', severity: 'error', endpoint: '10.27.1.249:80' }));
    expect(lines).toEqual(findings((await checkout(['replay', SEED_002])).stdout));
  });

  it.each(['agent', 'collector', 'local', 'doctor'])('%s says in one line that it needs Node 24, exit 2', async (command) => {
    ready();
    const got = await installed([command]);
    expect(got).toMatchObject({ code: 2, stdout: '' });
    expect(got.stderr).toMatch(new RegExp(`^conntrail: ${command} needs Node\\.js 24 or newer \\(this is v22\\.\\d+\\.\\d+\\); logs, parse, replay, services, incidents, findings and bundle run on Node\\.js 22 as well\\n$`));
  });

  it.each(errorCases.filter((c) => c.side === 'client').map((c) => [c.name, c] as const))('%s: one line, the same exit status as from the checkout', async (_name, c) => {
    ready();
    expect(judge(c, await installed(c.args(context())))).toBeNull();
  });
});
