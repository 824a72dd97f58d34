// `conntrail doctor`: a one-shot check of this node with no collector. It
// samples twice a couple of seconds apart through the real agent path into
// an in-process collector, runs every detector, adds the checks one node can
// decide from its configuration alone, and prints a report.
import { hostname } from 'node:os';
import { createHostIO, type HostIO } from '../agent/host-io.ts';
import { NodeState } from '../agent/node-state.ts';
import { createSamplers } from '../agent/samplers.ts';
import type { FindingLine } from '../collector/detection/aggregate.ts';
import { createPipeline } from '../collector/pipeline.ts';
import { kernelAtLeast } from '../collector/detection/detectors/input.ts';
import type { NodeView } from '../collector/state/node-view.ts';
import type { SourceStatus } from '../contract/protocol.ts';
import type { Sysctl } from '../contract/records.ts';
import { InProcessAgent } from './in-process.ts';
import type { Logger } from 'pino';

export interface Check {
  readonly check: string;
  readonly status: 'ok' | 'warning' | 'error' | 'skipped';
  readonly detail: string;
  readonly evidence: readonly string[];
}

export interface DoctorReport {
  readonly node: string;
  readonly kernel: string | null;
  readonly sources: readonly SourceStatus[];
  readonly checks: readonly Check[];
  readonly findings: readonly FindingLine[];
  readonly ok: boolean;
}

export async function runDoctor(options: { node?: string; gapMs?: number; io?: HostIO; log: Logger; sleep?: (ms: number) => Promise<void> }): Promise<DoctorReport> {
  const node = options.node ?? process.env.NODE_NAME ?? hostname();
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const findings: FindingLine[] = [];
  const { collector, detection } = createPipeline({ log: options.log, onFinding: (l) => findings.push(l) });
  const agent = new InProcessAgent(node, new NodeState(createSamplers(), options.io ?? createHostIO()), collector);
  // Samples over the gap (3 s by default): enough for a timer held by traffic to show against one
  // counting down (whole-second timers), and for kube-proxy's cleanup grace, which stale NAT counts in samples.
  const gapMs = options.gapMs ?? 3_000;
  // At the agent's own pace, one sample a second: re-arms show against the cache's reference as they do live.
  const steps = Math.max(2, Math.round(gapMs / 1000));
  await agent.step(Date.now());
  for (let i = 0; i < steps; i++) {
    await sleep(gapMs / steps);
    await agent.step(Date.now());
  }
  detection.flush(Date.now() + 3_600_000);
  const view = collector.nodes.get(node);
  if (view === undefined) throw new Error('doctor: the in-process collector has no view of this node');
  const kernel = view.recordMap('sysctl').get('kernel.osrelease')?.value ?? null;
  const checks = configurationChecks(view, kernel);
  return {
    node,
    kernel,
    sources: view.statuses(),
    checks,
    findings,
    ok: !findings.some((f) => f.severity === 'error') && !checks.some((c) => c.status === 'error'),
  };
}

/** What one node's configuration says on its own, before any traffic goes wrong. */
function configurationChecks(view: NodeView, kernel: string | null): Check[] {
  const sysctl = (name: string): Sysctl | undefined => view.recordMap('sysctl').get(name);
  const checks: Check[] = [];
  const ipvsInUse = view.recordMap('ipvs').size > 0;
  const reuse = sysctl('net.ipv4.vs.conn_reuse_mode');
  if (!ipvsInUse || reuse === undefined) {
    checks.push({ check: 'ipvs-conn-reuse-mode', status: 'skipped', detail: 'IPVS is not in use on this node', evidence: [] });
  } else if (reuse.value === '0') {
    const fixed = kernelAtLeast(kernel, 5, 9);
    checks.push({
      check: 'ipvs-conn-reuse-mode',
      status: 'warning',
      detail:
        fixed === false
          ? `conn_reuse_mode=0 on kernel ${kernel}: a client reusing a source port within TIME_WAIT is sent to the old (maybe removed) pod; kube-proxy sets 0 on kernels older than 5.9 by version string (kubernetes/kubernetes#81775, #102122)`
          : `conn_reuse_mode=0 on kernel ${kernel ?? '?'} (>= 5.9): set net.ipv4.vs.conn_reuse_mode=1, which these kernels handle without the 1 s delay (kubernetes/kubernetes#102122)`,
      evidence: [reuse.raw, ...(kernel ? [`kernel.osrelease = ${kernel}`] : [])],
    });
  } else {
    checks.push({ check: 'ipvs-conn-reuse-mode', status: 'ok', detail: `conn_reuse_mode=${reuse.value}`, evidence: [reuse.raw] });
  }
  // Strict reverse-path filtering drops replies and hairpinned packets that come back on another interface.
  const strict = [...view.recordMap('sysctl').values()].filter((r) => /^net\.ipv4\.conf\.(?!lo\.|default\.)[^.]+\.rp_filter$/.test(r.name) && r.value === '1');
  const all = sysctl('net.ipv4.conf.all.rp_filter');
  const strictAll = all?.value === '1';
  checks.push(
    strict.length === 0 && !strictAll
      ? { check: 'rp-filter', status: 'ok', detail: 'no interface does strict reverse-path filtering', evidence: all ? [all.raw] : [] }
      : {
          check: 'rp-filter',
          status: 'warning',
          detail: 'strict reverse-path filtering (rp_filter=1; the effective value is the maximum of `all` and the interface) drops packets arriving on an interface the node would not route their source back through: load-balancer hairpins and asymmetric pod routes (AWS VPC CNI sets 2, loose)',
          evidence: [...(all ? [all.raw] : []), ...strict.map((s) => s.raw)],
        },
  );
  const count = sysctl('net.netfilter.nf_conntrack_count');
  const max = sysctl('net.netfilter.nf_conntrack_max');
  if (count && max && Number(max.value) > 0) {
    const ratio = Number(count.value) / Number(max.value);
    checks.push({ check: 'conntrack-capacity', status: ratio >= 0.8 ? 'warning' : 'ok', detail: `conntrack table ${Math.round(ratio * 100)}% full (${count.value}/${max.value})`, evidence: [count.raw, max.raw] });
  }
  return checks;
}

const MARK: Record<string, string> = { ok: 'ok  ', warning: 'WARN', error: 'FAIL', skipped: 'skip' };

export function renderDoctor(r: DoctorReport): string {
  const out: string[] = [`conntrail doctor: node ${r.node}${r.kernel ? `, kernel ${r.kernel}` : ''}`, '', 'sources:'];
  for (const s of [...r.sources].sort((a, b) => a.source.localeCompare(b.source)))
    out.push(`  ${s.source.padEnd(14)} ${s.state === 'ok' ? `${s.records} records via ${s.via ?? '?'}${s.problemCount ? ` (${s.problemCount} unreadable lines)` : ''}` : `${s.state}: ${s.reason ?? ''}`}`);
  out.push('', 'checks:');
  for (const c of r.checks) {
    out.push(`  [${MARK[c.status] ?? c.status}] ${c.check}: ${c.detail}`);
    for (const e of c.evidence) out.push(`         ${e}`);
  }
  out.push('', r.findings.length === 0 ? 'findings: none' : `findings (${r.findings.length}):`);
  for (const f of r.findings) {
    out.push(`  [${f.severity === 'error' ? 'FAIL' : 'WARN'}] ${f.finding}${f.service ? ` on ${f.service}` : ''}${f.endpoint ? ` -> ${f.endpoint}` : ''}`);
    out.push(`         ${f.summary}`);
    for (const e of f.evidence) out.push(`         | ${e.raw}`);
    out.push(`         advice: ${f.advice}`);
  }
  out.push('', r.ok ? 'result: no error found' : 'result: ERROR (see above)');
  return out.join('\n');
}
