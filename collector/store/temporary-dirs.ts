// The temporary stores of collectors run without --data-dir, under TMPDIR.
// A store removes its own dir when it closes or the process exits, but a
// kill -9 or an OOM kill leaves it (its SQLite file and WAL, up to the
// window's worth of every node's steps), and every restart of a container
// whose TMPDIR is a volume would add one. So each dir names its owner
// (boot, pid namespace, pid and start time of the process) and is touched
// while the owner lives; a new temporary store removes the leftovers of
// owners that are gone: same boot and pid namespace with that process no
// longer there, another boot, or (an owner this process cannot see, in
// another pid namespace) not touched for STALE_MS.
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const TEMPORARY_PREFIX = 'conntrail-history-';
const OWNER_FILE = 'owner.json';
const LEFTOVER = /^conntrail-history-[A-Za-z0-9]{6}$/;
/** An owner in another pid namespace that has not touched its dir for this long is gone: live stores touch theirs every RETAIN_MS (a minute). */
export const STALE_MS = 10 * 60_000;

export interface Owner {
  readonly boot: string | null;
  readonly pidns: string | null;
  readonly pid: number;
  /** Field 22 of /proc/<pid>/stat: tells a reused pid from the process that wrote the owner. */
  readonly start: string | null;
}

const readOr = (f: () => string): string | null => {
  try {
    return f();
  } catch {
    return null;
  }
};

function startTime(pid: number): string | null {
  const stat = readOr(() => readFileSync(`/proc/${pid}/stat`, 'utf8'));
  if (stat === null) return null;
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
}

export function selfOwner(): Owner {
  return {
    boot: readOr(() => readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()),
    pidns: readOr(() => readlinkSync('/proc/self/ns/pid')),
    pid: process.pid,
    start: startTime(process.pid),
  };
}

function ownerOf(dir: string): Owner | null {
  const text = readOr(() => readFileSync(join(dir, OWNER_FILE), 'utf8'));
  if (text === null) return null;
  try {
    const o = JSON.parse(text) as Partial<Owner>;
    return typeof o.pid === 'number' ? { boot: o.boot ?? null, pidns: o.pidns ?? null, pid: o.pid, start: o.start ?? null } : null;
  } catch {
    return null;
  }
}

/** Why a leftover dir's owner is gone, or null while it may still be running. */
export function goneBecause(dir: string, me: Owner, now: number): string | null {
  const owner = ownerOf(dir);
  const touched = readOr(() => String(statSync(join(dir, owner === null ? '.' : OWNER_FILE)).mtimeMs));
  const idle = touched === null ? Number.POSITIVE_INFINITY : now - Number(touched);
  if (owner === null) return idle > STALE_MS ? `no owner, untouched for ${Math.round(idle / 60_000)} min` : null;
  if (owner.boot !== null && me.boot !== null && owner.boot !== me.boot) return 'written before the machine last booted';
  if (owner.pidns !== null && owner.pidns === me.pidns) {
    const start = startTime(owner.pid);
    if (start === null) return `process ${owner.pid} is gone`;
    if (owner.start !== null && start !== owner.start) return `process ${owner.pid} is another process now`;
    return null;
  }
  return idle > STALE_MS ? `owner in another pid namespace, untouched for ${Math.round(idle / 60_000)} min` : null;
}

/** Removes the leftovers under `parent` whose owners are gone; returns what went, with why. */
export function sweepLeftovers(parent: string, now = Date.now()): { dir: string; why: string }[] {
  const me = selfOwner();
  const removed: { dir: string; why: string }[] = [];
  let names: string[] = [];
  try {
    names = readdirSync(parent);
  } catch {
    // A TMPDIR that cannot be listed has nothing to sweep; claiming a dir in it fails on its own.
  }
  for (const name of names) {
    // Exactly what claimTemporaryDir makes (mkdtemp's six characters): nothing else that happens to share the prefix.
    if (!LEFTOVER.test(name)) continue;
    const dir = join(parent, name);
    const why = goneBecause(dir, me, now);
    if (why === null) continue;
    rmSync(dir, { recursive: true, force: true });
    removed.push({ dir, why });
  }
  return removed;
}

/** A new temporary dir under `parent`, naming this process as its owner. */
export function claimTemporaryDir(parent: string): string {
  const dir = mkdtempSync(join(parent, TEMPORARY_PREFIX));
  writeFileSync(join(dir, OWNER_FILE), `${JSON.stringify(selfOwner())}\n`);
  return dir;
}

/** Marks the dir as still in use (for sweepers in other pid namespaces). */
export function touchTemporaryDir(dir: string, now = Date.now()): void {
  const t = new Date(now);
  try {
    utimesSync(join(dir, OWNER_FILE), t, t);
  } catch {
    // Gone or read-only: a sweeper in another pid namespace may then take the dir for idle; this store keeps its open file.
  }
}
