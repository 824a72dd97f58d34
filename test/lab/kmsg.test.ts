// Seed 003 on the real kernel (lbHealthCheckDropped, IPVS mode, log_martians=1
// in node-1): the agent's own kmsg sampler, reading /dev/kmsg through the
// live HostIO, sees the kernel's `martian source <node> from <LB address>`
// lines appear while the LB's health checks are dropped. The kernel log is
// host-wide, so the lines are told apart from other labs' by their ll header,
// which starts with this lab's node-1 eth0 MAC. Needs root.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHostIO } from '../../agent/host-io.ts';
import { NodeState } from '../../agent/node-state.ts';
import { createSamplers } from '../../agent/samplers.ts';
import type { KmsgMartian } from '../../contract/records.ts';
import { assertLabPrerequisites, Lab } from './netns.ts';
import { lbHealthCheckDropped } from './scenarios.ts';

describe('the kmsg source on seed 003', () => {
  const scenario = lbHealthCheckDropped(new Lab());
  const f = scenario.facts;
  const added: KmsgMartian[] = [];
  let nodeMac = '';

  beforeAll(async () => {
    assertLabPrerequisites();
    await scenario.setup();
    const link = (await scenario.lab.ip(f.node, ['-o', 'link', 'show', 'eth0'])).stdout;
    nodeMac = /link\/ether ([0-9a-f:]{17})/.exec(link)?.[1] ?? '';
    const state = new NodeState(createSamplers().filter((s) => s.source === 'kmsg'), createHostIO());
    const first = await state.tick();
    expect(first.statusChanges).toMatchObject([{ source: 'kmsg', state: 'ok', via: '/dev/kmsg' }]);
    await scenario.drive();
    const after = await state.tick();
    for (const c of after.changes) if (c.source === 'kmsg') added.push(...(c.added as KmsgMartian[]));
  }, 60_000);
  afterAll(() => scenario.lab.teardown());

  it('reads martian-source lines from the LB address that appeared during the health checks, sent to this lab node', () => {
    expect(nodeMac).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    const ours = added.filter((m) => m.kind === 'martian-source' && m.src === f.loadBalancer.ip && m.llHeader?.startsWith(`00000000: ${nodeMac.replaceAll(':', ' ')}`));
    expect(ours.length, `kmsg records added: ${JSON.stringify(added.map((m) => m.raw))}`).toBeGreaterThan(0);
    // IPVS mode does not DNAT in PREROUTING: the logged destination is the node's own address.
    expect(ours.every((m) => m.dst === f.nodeIp && m.dev === 'eth0')).toBe(true);
    expect(ours[0]?.raw).toMatch(new RegExp(`^4,\\d+,\\d+,-;IPv4: martian source ${f.nodeIp.replaceAll('.', '\\.')} from ${f.loadBalancer.ip.replaceAll('.', '\\.')}, on dev eth0$`));
  });
});
