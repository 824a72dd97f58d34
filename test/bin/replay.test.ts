import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { replay } from '../../bin/replay.ts';
import { captureLog } from '../helpers/capture-log.ts';

const root = new URL('../..', import.meta.url).pathname;
const timelines = join(root, 'test/fixtures/timelines');
const run = promisify(execFile);

const TW = 'TCP 01:00  TIME_WAIT   10.23.31.87:58578  10.20.79.226:31199 10.27.1.249:80';
const SR = 'TCP 00:59  SYN_RECV    10.23.31.87:58578  10.20.79.226:31199 10.27.1.249:80';
const CT_SS = 'ipv4     2 tcp      6 119 SYN_SENT src=10.23.31.87 dst=10.20.79.226 sport=58578 dport=31199 [UNREPLIED] src=10.27.1.249 dst=10.23.31.87 sport=80 dport=58578 mark=0 zone=0 use=2';

describe('conntrail replay on seed 002 timelines (IPVS, conn_reuse_mode=0)', () => {
  it('reports a SYN reusing a TIME_WAIT tuple towards an endpoint the rollout removed, as an error with the verbatim lines', async () => {
    const { log } = captureLog();
    const lines = await replay(join(timelines, 'seed-002-reuse-to-removed-endpoint'), log);
    expect(lines).toHaveLength(1);
    const f = lines[0];
    expect(f).toMatchObject({
      finding: 'port-reuse-to-removed-endpoint',
      severity: 'error',
      node: 'cn-beijing.10.20.79.226',
      service: 'TCP 10.20.79.226:31199',
      tuple: { proto: 'tcp', src: '10.23.31.87', sport: 58578, dst: '10.20.79.226', dport: 31199 },
      endpoint: '10.27.1.249:80',
      count: 1,
      details: { connReuseMode: '0', kernel: '4.19.91-19.1.al7.x86_64', endpointState: 'removed' },
    });
    const raws = f?.evidence.map((e) => e.raw) ?? [];
    expect(raws).toContain(SR);
    expect(raws).toContain(CT_SS);
    expect(raws).toContain('net.ipv4.vs.conn_reuse_mode = 0');
    expect(f?.evidence.find((e) => e.raw === SR)?.time).toBe('2020-06-08T09:58:26.000Z');
    expect(f?.summary).toMatch(/left the Service at 2020-06-08T09:58:25.000Z/);
    expect(f?.advice).toMatch(/older than 5\.9/);
    expect(f?.advice).toMatch(/kubernetes\/kubernetes#81775/);
  });

  it('reports the same reuse towards a draining endpoint (weight 0) as a warning', async () => {
    const { log } = captureLog();
    const lines = await replay(join(timelines, 'seed-002-reuse-to-terminating-endpoint'), log);
    expect(lines.map((l) => [l.finding, l.severity, l.endpoint])).toEqual([['port-reuse-to-removed-endpoint', 'warning', '10.27.1.249:80']]);
  });

  it('stays silent when the reused tuple goes to an endpoint that is still serving', async () => {
    const { log } = captureLog();
    expect(await replay(join(timelines, 'seed-002-reuse-to-live-endpoint'), log)).toEqual([]);
  });

  it('reads the verbatim calico#4851 SYN_RECV output: reuse towards the backend that left is an error, towards the one still serving is not', async () => {
    const { log } = captureLog();
    const lines = await replay(join(timelines, 'calico-4851-reuse-after-scale-down'), log);
    expect(lines.map((l) => [l.finding, l.severity, l.endpoint, l.tuple?.sport])).toEqual([
      ['port-reuse-to-removed-endpoint', 'error', '10.178.166.153:8848', 59623],
      // The second tuple to the same endpoint in the same window is folded into a count.
      ['port-reuse-to-removed-endpoint', 'error', '10.178.166.153:8848', 59620],
    ]);
    expect(lines[1]?.count).toBe(1);
    expect(lines[0]?.evidence.map((e) => e.raw)).toContain('TCP 00:57  SYN_RECV    10.148.20.23:59623 10.148.201.234:8848 10.178.166.153:8848');
    expect(lines[0]?.advice).toMatch(/older than 5\.9/);
  });

  it('reports conntrack dropping flows when insert_failed and drop rise, with the table nearly full', async () => {
    const { log } = captureLog();
    const lines = await replay(join(timelines, 'conntrack-pressure-drops'), log);
    // 1822 of 2048 is already 89% full at the first sample: a warning; then drops begin: an error.
    expect(lines.map((l) => [l.finding, l.severity])).toEqual([['conntrack-pressure', 'warning'], ['conntrack-pressure', 'error']]);
    const f = lines[1];
    expect(f).toMatchObject({ severity: 'error', node: 'node-a', details: { insert_failed: 3, drop: 11, count: 2040, max: 2048 } });
    expect(f?.summary).toMatch(/insert_failed \+3, drop \+11 .*100% full|insert_failed \+3, drop \+11/);
    expect(f?.evidence.map((e) => e.raw)).toContain('net.netfilter.nf_conntrack_max = 2048');
  });

  it('prints the finding as the collector logs it, and exits 1 on an error finding', async () => {
    const err = await run(process.execPath, [join(root, 'bin/conntrail.js'), 'replay', join(timelines, 'seed-002-reuse-to-removed-endpoint')]).catch((e: { code: number; stdout: string }) => e);
    expect(err).toMatchObject({ code: 1 });
    const lines = (err as { stdout: string }).stdout.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 50, component: 'collector', finding: 'port-reuse-to-removed-endpoint', endpoint: '10.27.1.249:80' });
    expect(lines[0]?.evidence).toContainEqual(expect.objectContaining({ source: 'ipvs-conn', raw: TW }));
  });

  it('says clearly what is wrong with a directory that is not a timeline', async () => {
    const err = await run(process.execPath, [join(root, 'bin/conntrail.js'), 'replay', join(root, 'test/fixtures/conntrack')]).catch((e: { code: number; stderr: string }) => e);
    expect(err).toMatchObject({ code: 2 });
    expect((err as { stderr: string }).stderr).toMatch(/holds no node directories/);
  });
});
