// The registry is the one place a source is declared: these check that what
// the agent runs, what `conntrail parse` reads, what the image installs and
// what replay accepts are all that declaration, and nothing besides it.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NODE_COMMANDS } from '../../../agent/commands.ts';
import type { HostIO } from '../../../agent/host-io.ts';
import { NodeState } from '../../../agent/node-state.ts';
import { parsers } from '../../../agent/parsers.ts';
import { createRecordedIO } from '../../../agent/recorded-io.ts';
import { viaOf } from '../../../agent/sampling.ts';
import { createSamplers } from '../../../agent/samplers.ts';
import { allReads, recordedFiles, registry, SYSCTL_RECORDED } from '../../../agent/sources/registry.ts';
import { RECORDED_FILES, readTimeline } from '../../../bin/replay.ts';
import { sourceNames, specOf } from '../../../contract/sources.ts';

const declarations = Object.values(registry);

/** A recording holding an output for every read that has a recorded file, keyed as HostIO is asked. */
function fullRecording(): Map<string, string> {
  const rec = new Map<string, string>();
  for (const [, via] of Object.entries(recordedFiles())) rec.set(via, '');
  rec.set('/proc/sys/net/ipv4/conf/eth0/accept_local', '0\n');
  rec.set('/proc/sys/net/netfilter/nf_conntrack_count', '0\n');
  return rec;
}

/** What each sampler asked HostIO for. */
function spying(io: HostIO, asked: string[]): HostIO {
  return {
    now: () => io.now(),
    run: (argv, o) => (asked.push(argv.join(' ')), io.run(argv, o)),
    readFile: (p) => (asked.push(p), io.readFile(p)),
    readFileWith: (p, c) => (asked.push(p), io.readFileWith(p, c)),
    readLinesWith: (p, c) => (asked.push(p), io.readLinesWith(p, c)),
    listDir: (p) => (asked.push(p), io.listDir(p)),
    readKmsg: (p) => (asked.push(p), io.readKmsg(p)),
  };
}

describe('source registry', () => {
  it('declares every source of the contract once, under its own name, with the contract spec', () => {
    expect(Object.keys(registry).sort()).toEqual([...sourceNames].sort());
    for (const [key, d] of Object.entries(registry)) {
      expect(d.name).toBe(key);
      expect(d.spec).toBe(specOf(d.name));
      expect(d.reads.length, d.name).toBeGreaterThan(0);
    }
  });

  it('is what `conntrail parse` runs for each source', () => {
    for (const d of declarations) expect(parsers[d.name], d.name).toBe(d.parse);
  });

  it('is what the samplers sample, in its order', () => {
    expect(createSamplers().map((s) => s.source)).toEqual(declarations.map((d) => d.name));
  });

  it('gives every recorded file one read, and replay maps each to that read', () => {
    const names = allReads().flatMap(({ read }) => (read.recorded === null ? [] : [read.recorded]));
    expect(new Set(names).size).toBe(names.length);
    for (const { read } of allReads()) {
      if (read.kind === 'sysctl') expect(read.recorded).toBe(SYSCTL_RECORDED);
      else if (read.recorded !== null) expect(RECORDED_FILES[read.recorded]).toBe(viaOf(read));
    }
    expect(Object.keys(RECORDED_FILES).sort()).toEqual(names.filter((n) => n !== SYSCTL_RECORDED).sort());
  });

  it('every recorded file name is one `conntrail replay` accepts in a step', () => {
    const dir = mkdtempSync(join(tmpdir(), 'conntrail-registry-'));
    try {
      mkdirSync(join(dir, 'node-1', '1000'), { recursive: true });
      const names = allReads().flatMap(({ read }) => (read.recorded === null ? [] : [read.recorded]));
      for (const n of names) writeFileSync(join(dir, 'node-1', '1000', n), '');
      const steps = readTimeline(dir).get('node-1');
      expect([...(steps?.[0]?.files.keys() ?? [])].sort()).toEqual([...names].sort());
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('lists every command it declares among the commands the image must install', () => {
    const listed = new Set(NODE_COMMANDS.map((c) => c.name));
    const declared = allReads().flatMap(({ read }) => (read.kind === 'command' ? [read.argv[0] ?? ''] : []));
    for (const c of declared) expect(listed.has(c), c).toBe(true);
    // The rest are capture's.
    expect([...listed].filter((c) => !declared.includes(c))).toEqual(['tcpdump']);
  });

  it('samples every source from its recorded files, asking the node for nothing it does not declare', async () => {
    const asked: string[] = [];
    const state = new NodeState(createSamplers(), spying(createRecordedIO(fullRecording, () => 0), asked), () => 0);
    const tick = await state.tick();
    const bad = tick.statusChanges.filter((s) => s.state !== 'ok');
    expect(bad).toEqual([]);
    expect(tick.statusChanges.map((s) => s.source).sort()).toEqual([...sourceNames].sort());
    const declared = new Set(allReads().flatMap(({ read }) => (read.kind === 'sysctl' ? [] : [viaOf(read)])));
    const sysctlRoots = allReads().flatMap(({ read }) => (read.kind === 'sysctl' ? [read.root] : []));
    const undeclared = asked.filter((a) => !declared.has(a) && !sysctlRoots.some((root) => a.startsWith(`${root}/`)));
    expect(undeclared).toEqual([]);
  });

  it('takes the declared fallback when the first choice is missing (iptables-save where iptables-nft-save is absent)', async () => {
    const rec = new Map([['iptables-save -c', '*nat\n:KUBE-SERVICES - [0:0]\nCOMMIT\n']]);
    const sampler = createSamplers().find((s) => s.source === 'iptables');
    const sample = await sampler?.sample(createRecordedIO(() => rec));
    expect(sample?.readings.map((r) => r.via)).toEqual(['iptables-save -c']);
    expect(registry.iptables.reads.map((r) => (r.kind === 'command' ? r.argv[0] : null))).toEqual([
      'iptables-nft-save', 'iptables-legacy-save', 'iptables-save', 'ip6tables-nft-save', 'ip6tables-legacy-save', 'ip6tables-save',
    ]);
  });
});
