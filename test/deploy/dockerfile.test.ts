// The image cannot be built here (no container engine), so this checks what
// would break it at run time: every command the agent runs is installed by
// the Dockerfile's runtime stage, as Debian packages them on this machine.
import { execFileSync } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { NODE_COMMANDS } from '../../agent/commands.ts';

const root = new URL('../..', import.meta.url).pathname;
const dockerfile = readFileSync(`${root}Dockerfile`, 'utf8');

interface Stage {
  readonly from: string;
  readonly text: string;
  readonly packages: readonly string[];
}

/** Stages in order, with the Debian packages each one's `apt-get install` lines name (continuations joined). */
function stages(text: string): Stage[] {
  const args = new Map([...text.matchAll(/^ARG\s+(\w+)=(\S+)/gm)].map((m) => [m[1] ?? '', m[2] ?? '']));
  const joined = text.replace(/\\\n/g, ' ');
  return joined
    .split(/^(?=FROM\s)/m)
    .filter((s) => s.startsWith('FROM'))
    .map((s) => {
      const from = (/^FROM\s+(\S+)/.exec(s)?.[1] ?? '').replace(/\$\{(\w+)\}/g, (_, name: string) => args.get(name) ?? '');
      const packages = [...s.matchAll(/apt-get install ([^&\n]+)/g)].flatMap((m) => (m[1] ?? '').split(/\s+/).filter((w) => w !== '' && !w.startsWith('-')));
      return { from, text: s, packages };
    });
}

/** The Debian package that ships `command` here, following symlinks and alternatives, with or without the usr-merge prefix. */
function debianPackageOf(command: string): string {
  let path: string;
  try {
    path = execFileSync('sh', ['-c', `command -v ${command}`], { encoding: 'utf8' }).trim();
  } catch {
    throw new Error(`${command} is not installed on this machine: run npm run setup`);
  }
  const candidates = new Set([path, realpathSync(path)]);
  for (const p of [...candidates]) {
    candidates.add(p.replace(/^\/usr(?=\/s?bin\/)/, ''));
    if (/^\/s?bin\//.test(p)) candidates.add(`/usr${p}`);
  }
  for (const p of candidates) {
    try {
      const out = execFileSync('dpkg', ['-S', p], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const pkg = /^([^:,\s]+)(?::\w+)?:/.exec(out)?.[1];
      if (pkg) return pkg;
    } catch {
      // not owned under this spelling: try the next
    }
  }
  throw new Error(`no Debian package owns ${[...candidates].join(' or ')}`);
}

/**
 * Command names at the places the agent runs something: argv arrays that start
 * with a command and a flag, the argv of a registry `run(argv, …)` read
 * (`ipset save` has a subcommand, not a flag), and capture's `cmd:`.
 */
function commandsAtCallSites(): Set<string> {
  const found = new Set<string>();
  for (const file of ['agent/sources/registry.ts', 'agent/sampling.ts', 'agent/samplers.ts', 'agent/capture.ts']) {
    const text = readFileSync(`${root}${file}`, 'utf8');
    for (const m of text.matchAll(/\[\s*'([a-z][a-z0-9-]*)'\s*,\s*'-/g)) found.add(m[1] ?? '');
    for (const m of text.matchAll(/\brun\(\s*\[\s*'([a-z][a-z0-9-]*)'/g)) found.add(m[1] ?? '');
    for (const m of text.matchAll(/\bcmd:\s*'([a-z][a-z0-9-]*)'/g)) found.add(m[1] ?? '');
  }
  return found;
}

const all = stages(dockerfile);
const build = all[0];
const runtime = all.at(-1);

describe('Dockerfile', () => {
  it('builds in one stage and runs on Node.js 24 slim in another', () => {
    expect(all).toHaveLength(2);
    expect(build?.from).toMatch(/^node:24[-.\w]*-slim$/);
    expect(runtime?.from).toMatch(/^node:24[-.\w]*-slim$/);
    expect(runtime?.text).toMatch(/COPY --from=build /);
  });

  it('compiles node-pty with the dev toolchain in the build stage only, and ships production dependencies only', () => {
    for (const tool of ['python3', 'make', 'g++']) {
      expect(build?.packages, tool).toContain(tool);
      expect(runtime?.packages, tool).not.toContain(tool);
    }
    expect(build?.text).toMatch(/npm ci\b/);
    expect(build?.text).toMatch(/npm prune --omit=dev/);
    expect(runtime?.text).not.toMatch(/npm (ci|install)/);
  });

  it('ships a warm compile cache, so processes started from the image skip the TypeScript stripper', () => {
    expect(build?.text).toMatch(/RUN node scripts\/warm-compile-cache\.js/);
    expect(readFileSync(`${root}bin/conntrail.js`, 'utf8')).toContain("node_modules/.cache/conntrail");
  });

  it('starts bin/conntrail.js, so one image serves `agent` and `collector`', () => {
    expect(runtime?.text).toMatch(/ENTRYPOINT \["node", "\/app\/bin\/conntrail\.js"\]/);
  });

  it('lists every command the agent runs, and runs no command it does not list', () => {
    const listed = new Set(NODE_COMMANDS.map((c) => c.name));
    const used = commandsAtCallSites();
    expect(used.size).toBeGreaterThan(5);
    for (const c of used) expect(listed.has(c), `${c} is run by the agent but missing from agent/commands.ts`).toBe(true);
    for (const c of listed) expect(used.has(c), `${c} is listed but never run`).toBe(true);
  });

  it.each(NODE_COMMANDS.map((c) => [c.name] as const))('installs the Debian package that ships %s in the runtime stage', (command) => {
    const pkg = debianPackageOf(command);
    expect(runtime?.packages, `${command} comes from Debian package ${pkg}`).toContain(pkg);
  });

  it('gets both iptables backends from the iptables package', () => {
    const files = execFileSync('dpkg', ['-L', 'iptables'], { encoding: 'utf8' }).split('\n');
    expect(files.some((f) => f.endsWith('/xtables-legacy-multi'))).toBe(true);
    expect(files.some((f) => f.endsWith('/xtables-nft-multi'))).toBe(true);
    expect(runtime?.packages).toContain('iptables');
  });
});
