// The Lab's lifecycle on the real kernel: what it creates, what it removes,
// how it reports failures. Needs root: fails (never skips) with what is missing.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { assertInterfaceName, assertLabPrerequisites, Lab, LabCommandError } from './netns.ts';
import { runClient, startServer } from './traffic.ts';

function ipNetnsList(): string[] {
  return execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

const mineOf = (lab: Lab): string[] => ipNetnsList().filter((n) => n.startsWith(`${lab.prefix}-`));

describe('Lab', () => {
  const labs: Lab[] = [];
  const newLab = (): Lab => {
    const lab = new Lab();
    labs.push(lab);
    return lab;
  };

  beforeAll(() => assertLabPrerequisites());
  afterAll(async () => {
    for (const lab of labs) await lab.teardown();
  });

  it('gives each instance its own prefix, so parallel test files never share a namespace', () => {
    const a = newLab();
    const b = newLab();
    expect(a.prefix).not.toBe(b.prefix);
    expect(a.prefix).toMatch(/^ctlab-[0-9a-f]{6}$/);
  });

  it('creates namespaces under its prefix and removes every one at teardown, and a second teardown is harmless', async () => {
    const lab = newLab();
    await lab.addNamespace('a');
    await lab.addNamespace('b');
    expect(mineOf(lab).sort()).toEqual([`${lab.prefix}-a`, `${lab.prefix}-b`]);
    expect(lab.netns('a')).toBe(`${lab.prefix}-a`);
    await lab.teardown();
    expect(mineOf(lab)).toEqual([]);
    await lab.teardown();
    await expect(lab.addNamespace('c')).rejects.toThrow(/torn down/);
  });

  it('cleans up after a setup that failed halfway', async () => {
    const lab = newLab();
    await lab.addNamespace('half');
    await expect(lab.veth('half', 'eth0', 'missing', 'eth0')).rejects.toThrow(/not part of lab/);
    await lab.teardown();
    expect(mineOf(lab)).toEqual([]);
  });

  it('names the command and quotes its stderr when it fails', async () => {
    const lab = newLab();
    await lab.addNamespace('x');
    const err = await lab.exec('x', ['ip', 'link', 'show', 'nosuchdev0']).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LabCommandError);
    expect(String(err)).toMatch(/command failed \(exit \d+\): .*ip netns exec .*-x .*ip link show nosuchdev0/);
    expect(String(err)).toMatch(/nosuchdev0/);
    const res = await lab.exec('x', ['ip', 'link', 'show', 'nosuchdev0'], { check: false });
    expect(res.code).not.toBe(0);
    expect(res.stderr).toMatch(/does not exist/);
  });

  it('kills a command that overruns its timeout and says so', async () => {
    const lab = newLab();
    await lab.addNamespace('slow');
    const started = Date.now();
    await expect(lab.exec('slow', ['sleep', '5'], { timeoutMs: 200 })).rejects.toThrow(/timed out after 200 ms/);
    expect(Date.now() - started).toBeLessThan(2_000);
  });

  it('writes a sysctl inside the namespace only', async () => {
    const lab = newLab();
    await lab.addNamespace('s');
    const host = readFileSync('/proc/sys/net/ipv4/conf/all/log_martians', 'utf8');
    const flipped = host.trim() === '1' ? 0 : 1;
    await lab.sysctl('s', 'net.ipv4.conf.all.log_martians', flipped);
    expect((await lab.exec('s', ['sysctl', '-n', 'net.ipv4.conf.all.log_martians'])).stdout.trim()).toBe(String(flipped));
    expect(readFileSync('/proc/sys/net/ipv4/conf/all/log_martians', 'utf8')).toBe(host);
  });

  it('connects two namespaces with a veth whose names need not be unique on the host', async () => {
    const lab = newLab();
    await lab.addNamespace('left');
    await lab.addNamespace('right');
    await lab.veth('left', 'eth0', 'right', 'eth0');
    await lab.ip('left', ['addr', 'add', '198.18.250.1/30', 'dev', 'eth0']);
    await lab.ip('right', ['addr', 'add', '198.18.250.2/30', 'dev', 'eth0']);
    await startServer(lab, 'right', { kind: 'tcp', port: 8080, name: 'right' });
    const attempts = await runClient(lab, 'left', { mode: 'tcp-client', host: '198.18.250.2', port: 8080, count: 1, timeoutMs: 2_000 });
    expect(attempts.map((a) => `${a.status}:${a.pod ?? ''}`)).toEqual(['ok:right']);
  });

  it('stops the processes of a namespace before deleting it, so its addresses really go away', async () => {
    const lab = newLab();
    await lab.addNamespace('p');
    const proc = lab.spawn('p', ['sleep', '30']);
    expect(proc.running).toBe(true);
    await lab.deleteNamespace('p');
    expect(proc.running).toBe(false);
    expect(mineOf(lab)).toEqual([]);
  });

  it('stops every spawned process at teardown', async () => {
    const lab = newLab();
    await lab.addNamespace('q');
    const proc = lab.spawn('q', ['sleep', '30']);
    await lab.teardown();
    expect(proc.running).toBe(false);
  });

  it('says it needs root when run as another user', () => {
    expect(() => assertLabPrerequisites({ uid: 1000 })).toThrow(/need root .*uid 1000; run them as root/);
  });

  it('names each missing command and the Debian package to install', () => {
    const absent = new Set(['nft', 'conntrack', 'iptables-save']);
    const lookup = (name: string): string | undefined => (absent.has(name) ? undefined : `/usr/sbin/${name}`);
    expect(() => assertLabPrerequisites({ uid: 0, findTool: lookup })).toThrow(
      'missing commands: iptables-save, nft, conntrack (install with: apt-get install iptables nftables conntrack, or run npm run setup)',
    );
  });

  it.each([['a-name-far-too-long'], ['has space'], ['']])('refuses the interface name %j (IFNAMSIZ, characters)', (name) => {
    expect(() => assertInterfaceName(name)).toThrow(/interface name/);
  });
});
