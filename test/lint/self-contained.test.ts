// CI runs a fresh clone of this repository and nothing beside it: a test that
// reads a file outside the tree passes here and fails there.
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = new URL('../..', import.meta.url).pathname;

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((d) => {
    if (d.name === 'node_modules' || d.name === 'fixtures' || d.name.startsWith('.')) return [];
    const p = join(dir, d.name);
    return d.isDirectory() ? tsFiles(p) : d.name.endsWith('.ts') ? [p] : [];
  });
}

describe('the tree is self-contained', () => {
  it('no source or test reads a path outside the repository (../shared, /work/…)', () => {
    const offenders = ['agent', 'bin', 'collector', 'contract', 'test'].flatMap((top) =>
      tsFiles(join(ROOT, top)).flatMap((f) =>
        readFileSync(f, 'utf8')
          .split('\n')
          .flatMap((line, i) => (/['"`](\.\.\/)+shared\/|['"`]\/work\//.test(line) ? [`${relative(ROOT, f)}:${i + 1}: ${line.trim()}`] : [])),
      ),
    );
    expect(offenders).toEqual([]);
  });
});
