// The layering in eslint.config.js bites: agent/ and collector/ meet only in
// contract/, and contract/ imports nothing but Node built-ins and itself. Each
// case lints a made-up file with the project's own config.
import { fileURLToPath } from 'node:url';
import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../..', import.meta.url));
// The made-up files are not on disk, so the project service takes them into
// its default project; everything else is the config as `eslint .` runs it.
const eslint = new ESLint({
  cwd: root,
  overrideConfig: {
    languageOptions: { parserOptions: { projectService: { allowDefaultProject: ['*/x.ts', 'agent/sources/x.ts'] } } },
  },
});

async function restricted(filePath: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath });
  expect(result?.fatalErrorCount).toBe(0);
  return (result?.messages ?? []).filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

describe('layering (no-restricted-imports)', () => {
  it('refuses agent/ in collector/', async () => {
    const messages = await restricted('collector/x.ts', "export type { HostIO } from '../agent/host-io.ts';\n");
    expect(messages).toEqual([expect.stringContaining('collector/ must not import from agent/')]);
  });

  it('refuses collector/ in agent/, from a subfolder too', async () => {
    const messages = await restricted('agent/sources/x.ts', "import type { Collector } from '../../collector/receive/collector.ts';\nexport type C = Collector;\n");
    expect(messages).toEqual([expect.stringContaining('agent/ must not import from collector/')]);
  });

  it('refuses a package from npm in contract/', async () => {
    const messages = await restricted('contract/x.ts', "import pino from 'pino';\nexport const log = pino();\n");
    expect(messages).toEqual([expect.stringContaining('contract/ must stay dependency-free')]);
  });

  it('refuses agent/ and collector/ in contract/', async () => {
    const messages = await restricted('contract/x.ts', "export * from '../agent/host-io.ts';\nexport * from '../collector/report.ts';\n");
    expect(messages).toHaveLength(2);
    for (const m of messages) expect(m).toContain('contract/ is shared by agent/ and collector/');
  });

  it('lets both sides import contract/, and contract/ import Node built-ins and itself', async () => {
    expect(await restricted('collector/x.ts', "export * from '../contract/records.ts';\n")).toEqual([]);
    expect(await restricted('agent/x.ts', "export * from '../contract/records.ts';\n")).toEqual([]);
    expect(await restricted('contract/x.ts', "export * from './records.ts';\nexport { isIPv4 } from 'node:net';\n")).toEqual([]);
  });
});
