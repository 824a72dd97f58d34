// Seed 003 recorded from the lab's IPVS-mode node (test/lab/capture-seed-003.ts):
// ipvsadm text as kube-proxy programs it, real ipsets, addresses, routes,
// sysctls and rt_cache counters, replayed through the agent's samplers and
// the collector's pipeline.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { replay } from '../../bin/replay.ts';
import { captureLog } from '../helpers/capture-log.ts';

const timelines = join(new URL('../..', import.meta.url).pathname, 'test/fixtures/timelines');

describe('conntrail replay of seed 003 in IPVS mode', () => {
  it('with ipset-save.txt: the LB address on kube-ipvs0 is a warning first, an error once martians and the Local NodePort rule rise', async () => {
    const { log } = captureLog();
    const lines = (await replay(join(timelines, 'seed-003-ipvs-lb-healthcheck'), log)).filter((l) => l.finding === 'lb-healthcheck-dropped');
    expect(lines[0]).toMatchObject({ severity: 'warning', tuple: { src: '198.18.100.20' } });
    const error = lines.find((l) => l.severity === 'error');
    expect(error).toMatchObject({ tuple: { src: '198.18.100.20', dport: 32000 }, details: expect.objectContaining({ loadBalancerIP: '198.18.100.20' }) });
    expect(error?.evidence.map((e) => e.source)).toEqual(expect.arrayContaining(['routes', 'addrs', 'rt-cache-stat']));
    // The ClusterIP bound beside it on kube-ipvs0 is never taken for an LB address.
    expect(lines.every((l) => l.tuple?.src === '198.18.100.20')).toBe(true);
  });

  it('without ipset-save.txt: nothing tells the LB address from a ClusterIP on kube-ipvs0, and conntrail claims nothing', async () => {
    const { log } = captureLog();
    const lines = await replay(join(timelines, 'seed-003-ipvs-lb-healthcheck-no-ipset'), log);
    expect(lines.filter((l) => l.finding === 'lb-healthcheck-dropped')).toEqual([]);
  });
});
