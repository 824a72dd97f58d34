// Every command's --help, and every mistake in test/bin/cli-cases.ts, through
// the real CLI of this checkout: one stderr line naming the flag or path, the
// documented exit status, no stack trace, and nothing opened for a wrong
// command line.
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { caseContext, commands, errorCases, judge, root, runTo, type CaseContext } from './cli-cases.ts';

const cli = join(root, 'bin/conntrail.js');
const conntrail = (args: readonly string[], o: { timeoutMs?: number } = {}) => runTo([process.execPath, cli, ...args], o);

let ctx: CaseContext & { close(): Promise<void> };
beforeAll(async () => {
  ctx = await caseContext();
});
afterAll(async () => {
  await ctx.close();
});

describe('conntrail COMMAND --help', () => {
  it.each(commands)('%s --help: its synopsis and flags on stdout, exit 0', async (command) => {
    const ran = await conntrail([command, '--help']);
    expect(ran, ran.stderr).toMatchObject({ code: 0, stderr: '' });
    expect(ran.stdout).toMatch(new RegExp(`^usage: conntrail ${command}\\b`));
    expect(ran.stdout).toContain('exit status: 0 done, 1 an error finding was reported (replay, doctor), 2 the command line is wrong, 3 it failed');
    // Each flag of the synopsis is explained below it.
    const [synopsis = '', details = ''] = ran.stdout.split('\n\n');
    for (const flag of synopsis.match(/--[a-z][a-z-]+/g) ?? []) expect(details, `${command} --help explains ${flag}`).toContain(flag);
  });

  it('conntrail --help lists every command; conntrail alone is a usage error', async () => {
    const help = await conntrail(['--help']);
    expect(help.code).toBe(0);
    for (const command of commands) expect(help.stdout).toContain(`  conntrail ${command} `);
    const bare = await conntrail([]);
    expect(bare).toMatchObject({ code: 2, stdout: '' });
    expect(bare.stderr).toContain('usage:');
  });

  it('conntrail help parse is conntrail parse --help', async () => {
    expect((await conntrail(['help', 'parse'])).stdout).toBe((await conntrail(['parse', '--help'])).stdout);
  });
});

describe('a command line that is wrong, or a command that fails, ends in one line', () => {
  it.each(errorCases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const ran = await conntrail(c.args(ctx));
    expect(judge(c, ran)).toBeNull();
  });
});

describe('one duration syntax for every flag', () => {
  it('the collector takes --capture 1m like --history 2h, and listens', async () => {
    const ran = await runTo([process.execPath, cli, 'collector', '--capture', '1m', '--history', '2h', '--listen', '127.0.0.1:0', '--no-kubernetes'], { timeoutMs: 4_000 });
    // Killed once it has shown it listens: it took both flags.
    expect(ran.stdout).toContain('"msg":"collector listening"');
    expect(ran.stderr).toBe('');
  });

  it('the agent takes --interval 2s and --journal-max-age 1h', async () => {
    const ran = await runTo([process.execPath, cli, 'agent', '--collector', `ws://127.0.0.1:${ctx.closedPort}`, '--node', 'n1', '--interval', '2s', '--journal-max-age', '1h'], { timeoutMs: 4_000 });
    const starting = ran.stdout.split('\n').find((l) => l.includes('"msg":"agent starting"'));
    expect(JSON.parse(starting ?? '{}')).toMatchObject({ intervalMs: 2000, journal: { maxAgeMs: 3_600_000 } });
  });
});
