// `conntrail doctor` run as root inside the lab's nodes: it names a faulty
// node's fault and exits non-zero; on a healthy node it exits 0.
import { afterEach, describe, expect, it } from 'vitest';
import type { DoctorReport } from '../../bin/doctor.ts';
import { buildCluster } from '../lab/cluster.ts';
import { assertLabPrerequisites, Lab } from '../lab/netns.ts';
import { lbHairpin, lbHealthCheckDropped, udpRolloutStaleConntrack } from '../lab/scenarios.ts';
import { nodeBinary } from '../lab/traffic.ts';
import { cli } from './harness.ts';

const labs: Lab[] = [];
afterEach(async () => {
  for (const l of labs.splice(0)) await l.teardown();
});
function newLab(): Lab {
  assertLabPrerequisites();
  const l = new Lab();
  labs.push(l);
  return l;
}

async function doctor(lab: Lab, node: string): Promise<{ code: number; report: DoctorReport; text: string }> {
  const json = await lab.exec(node, [nodeBinary(), cli, 'doctor', '--json', '--node', node], { check: false, timeoutMs: 30_000 });
  const text = await lab.exec(node, [nodeBinary(), cli, 'doctor', '--node', node], { check: false, timeoutMs: 30_000 });
  return { code: json.code, report: JSON.parse(json.stdout) as DoctorReport, text: text.stdout };
}

describe('conntrail doctor in the lab', { timeout: 90_000 }, () => {
  it('exits 0 on a healthy node and lists what it read', async () => {
    const lab = newLab();
    await buildCluster(lab, { nodes: [{ name: 'node-1' }], pods: [{ name: 'p', node: 'node-1' }] });
    const { code, report, text } = await doctor(lab, 'node-1');
    expect(code).toBe(0);
    expect(report.ok).toBe(true);
    expect(report.findings.filter((f) => f.severity === 'error')).toEqual([]);
    expect(report.sources.find((s) => s.source === 'conntrack')?.state).toBe('ok');
    expect(text).toMatch(/^conntrail doctor: node node-1/);
    expect(text).toMatch(/result: no error found/);
  });

  it('names the stale NAT entry pinning a client to a removed pod, and exits 1', async () => {
    const lab = newLab();
    const s = udpRolloutStaleConntrack(lab);
    await s.setup();
    let result: { code: number; report: DoctorReport; text: string } | null = null;
    await s.drive({ pinnedMs: 1_000, onPinned: async () => { result = await doctor(lab, 'node-1'); } });
    const r = result as unknown as { code: number; report: DoctorReport; text: string };
    expect(r.code).toBe(1);
    const f = r.report.findings.find((x) => x.finding === 'stale-nat-to-removed-endpoint');
    expect(f).toMatchObject({ severity: 'error', node: 'node-1', endpoint: `${s.facts.oldEndpoint.ip}:53`, tuple: { src: s.facts.tuple.src, sport: s.facts.tuple.sport } });
    expect(r.text).toContain(`conntrack -D -p udp --orig-dst 198.18.64.53 --dst-nat ${s.facts.oldEndpoint.ip}`);
    expect(r.text).toMatch(/result: ERROR/);
  });

  it('sees a pod hairpinned back through its own node by the LB, and exits 1', async () => {
    const lab = newLab();
    const s = lbHairpin(lab);
    await s.setup();
    const [r] = await Promise.all([doctor(lab, 'node-1'), s.drive()]);
    expect(r.code).toBe(1);
    expect(r.report.findings.find((f) => f.finding === 'lb-hairpin')).toMatchObject({ severity: 'error', endpoint: `${s.facts.endpoint.ip}:${s.facts.endpoint.port}` });
  });

  it('sees health checks from the LB address being dropped, and exits 1', async () => {
    const lab = newLab();
    const s = lbHealthCheckDropped(lab);
    await s.setup();
    const [r] = await Promise.all([doctor(lab, 'node-1'), s.drive()]);
    expect(r.code).toBe(1);
    expect(r.report.findings.map((f) => [f.finding, f.severity])).toContainEqual(['lb-healthcheck-dropped', 'error']);
  });
});
