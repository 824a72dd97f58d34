// Without --data-dir the collector keeps history in a temporary store under
// TMPDIR, removed at exit; a kill -9 leaves it. The next temporary store
// removes the leftovers whose owners are gone, and only those: a real
// collector process killed with SIGKILL and started again over the same
// TMPDIR, and hand-made leftovers of every kind of owner beside it.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../../collector/store/store.ts';
import { selfOwner, STALE_MS } from '../../collector/store/temporary-dirs.ts';
import { captureLog } from '../helpers/capture-log.ts';
import { startCollectorProcess } from '../helpers/collector-process.ts';

const startOf = (pid: number): string => {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
};
const leftovers = (dir: string) => readdirSync(dir).filter((n) => n.startsWith('conntrail-history-')).sort();

describe('leftover temporary stores', { timeout: 60_000 }, () => {
  let scratch = '';
  let savedTmp: string | undefined;
  const children: ChildProcess[] = [];
  beforeAll(() => {
    scratch = mkdtempSync(join(tmpdir(), 'conntrail-temporary-store-'));
  });
  afterEach(() => {
    if (savedTmp === undefined) delete process.env.TMPDIR;
    else process.env.TMPDIR = savedTmp;
    for (const c of children.splice(0)) c.kill('SIGKILL');
  });
  afterAll(() => {
    rmSync(scratch, { recursive: true, force: true });
  });

  it('go when their owner is gone (dead, a reused pid, another boot, silent too long) and stay while it may live', async () => {
    const tmp = join(scratch, 'hand-made');
    mkdirSync(tmp);
    const me = selfOwner();
    const sleeper = () => {
      const c = spawn('sleep', ['60'], { stdio: 'ignore' });
      children.push(c);
      return c;
    };
    const dead = sleeper();
    const deadOwner = { ...me, pid: dead.pid ?? 0, start: startOf(dead.pid ?? 0) };
    dead.kill('SIGKILL');
    await new Promise((r) => dead.once('exit', r));
    const alive = sleeper();
    const old = new Date(Date.now() - STALE_MS - 60_000);
    const leftover = (name: string, owner: object | null, touched?: Date) => {
      const d = join(tmp, name);
      mkdirSync(d);
      writeFileSync(join(d, 'conntrail.db'), 'x');
      if (owner !== null) writeFileSync(join(d, 'owner.json'), JSON.stringify(owner));
      if (touched !== undefined) utimesSync(owner === null ? d : join(d, 'owner.json'), touched, touched);
    };
    leftover('conntrail-history-dead01', deadOwner);
    leftover('conntrail-history-reuse1', { ...me, pid: alive.pid, start: '1' });
    leftover('conntrail-history-boot01', { ...me, boot: '00000000-0000-0000-0000-000000000000', pid: alive.pid, start: startOf(alive.pid ?? 0) });
    leftover('conntrail-history-nsold1', { ...me, pidns: 'pid:[1]', pid: 7 }, old);
    leftover('conntrail-history-noown1', null, old);
    leftover('conntrail-history-alive1', { ...me, pid: alive.pid, start: startOf(alive.pid ?? 0) });
    leftover('conntrail-history-nsnew1', { ...me, pidns: 'pid:[1]', pid: 7 });
    leftover('conntrail-history-noown2', null);
    // Shares the prefix, is not one of ours: never touched.
    leftover('conntrail-history-store-test-abcdef', null, old);

    savedTmp = process.env.TMPDIR;
    process.env.TMPDIR = tmp;
    const log = captureLog();
    const { store } = Store.temporary(log.log, { windowMs: 60_000 });
    try {
      const removed = log.lines.filter((l) => l.msg === 'removed a temporary store left by a collector that is gone').map((l) => [String(l.path).slice(tmp.length + 1), l.why]);
      expect(removed.sort()).toEqual([
        ['conntrail-history-boot01', 'written before the machine last booted'],
        // The pid may already be someone else's: either way the owner is gone.
        ['conntrail-history-dead01', expect.stringMatching(new RegExp(`^process ${deadOwner.pid} is (gone|another process now)$`))],
        ['conntrail-history-noown1', expect.stringMatching(/^no owner, untouched for 1[01] min$/)],
        ['conntrail-history-nsold1', expect.stringMatching(/^owner in another pid namespace, untouched for 1[01] min$/)],
        ['conntrail-history-reuse1', `process ${alive.pid} is another process now`],
      ]);
      const own = store.path.slice(tmp.length + 1).split('/')[0] ?? '';
      expect(leftovers(tmp)).toEqual(['conntrail-history-alive1', 'conntrail-history-noown2', 'conntrail-history-nsnew1', 'conntrail-history-store-test-abcdef', own].sort());
    } finally {
      store.close();
    }
  });

  it('of a collector killed with SIGKILL are removed by the next one started over the same TMPDIR', async () => {
    const first = await startCollectorProcess({ token: 'temporary-store-token' });
    const tmp = join(first.dir, 'tmp');
    try {
      const [left] = leftovers(tmp);
      expect(left, 'the first collector keeps its history in a temporary store').toBeDefined();
      first.child.kill('SIGKILL');
      await new Promise((r) => (first.exited() ? r(null) : first.child.once('exit', r)));
      expect(existsSync(join(tmp, left ?? ''))).toBe(true);
      const second = await startCollectorProcess({ token: 'temporary-store-token', dir: first.dir });
      try {
        expect(second.lines.find((l) => l.msg === 'removed a temporary store left by a collector that is gone')).toMatchObject({ path: join(tmp, left ?? ''), why: `process ${first.child.pid} is gone` });
        const now = leftovers(tmp);
        expect(now).toHaveLength(1);
        expect(now).not.toContain(left);
      } finally {
        await second.stop();
      }
    } finally {
      await first.stop();
    }
  });
});
