// Records seed 003 in IPVS mode from the namespace lab, as a timeline that
// `conntrail replay` reads (bin/replay.ts: DIR/<node>/<ISO time>/<file>).
//
//   node test/lab/capture-seed-003.ts OUTDIR        (as root)
//
// writes OUTDIR/seed-003-ipvs-lb-healthcheck/node-1/<time>/… and the same
// timeline without ipset-save.txt as OUTDIR/seed-003-ipvs-lb-healthcheck-no-ipset.
// It runs lbHealthCheckDropped (IPVS mode) and snapshots node-1 at four
// moments: before the probes, twice while the LB's health checks are being
// dropped (counters and in_martian_src rising), and after the control probes.
// Every file is the real output of the command RECORDED_FILES names for it
// (sysctl.txt: the accept_local, rp_filter and log_martians lines of
// `sysctl -a`), run inside node-1's namespace, except ipvsadm-Ln.txt: this kernel has no IPVS,
// so it is the table kube-proxy would have programmed (renderIpvsadmList),
// recorded once (replay carries a file over to later steps).
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { assertLabPrerequisites, Lab } from './netns.ts';
import { lbHealthCheckDropped } from './scenarios.ts';

export const TIMELINE = 'seed-003-ipvs-lb-healthcheck';
export const TIMELINE_NO_IPSET = `${TIMELINE}-no-ipset`;

// The per-interface knobs that decide whether a local source is a martian.
const SYSCTL_LINE = /^net\.ipv4\.conf\.[^.\s]+\.(accept_local|rp_filter|log_martians) = /;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface Step {
  readonly time: string;
  readonly files: Map<string, string>;
}

async function snapshot(lab: Lab, ns: string): Promise<Step> {
  const time = new Date().toISOString();
  const out = async (argv: string[]): Promise<string> => (await lab.exec(ns, argv)).stdout;
  const [iptables, addr, link, route, route6, rule, rule6, sysctl, rtCache, ctStat, conntrack, ipset] = await Promise.all([
    out(['iptables-nft-save', '-c']),
    out(['ip', '-o', 'addr', 'show']),
    out(['ip', '-o', 'link', 'show']),
    out(['ip', '-4', 'route', 'show', 'table', 'all']),
    // IPv6 is off in the lab's namespaces: empty, but recorded, so the routes and rules sources are not "unavailable".
    out(['ip', '-6', 'route', 'show', 'table', 'all']),
    out(['ip', '-4', 'rule', 'show']),
    out(['ip', '-6', 'rule', 'show']),
    lab.exec(ns, ['sysctl', '-a'], { check: false }).then((r) => r.stdout),
    out(['cat', '/proc/net/stat/rt_cache']),
    out(['cat', '/proc/net/stat/nf_conntrack']),
    out(['cat', '/proc/net/nf_conntrack']),
    out(['ipset', 'save']),
  ]);
  const sysctlLines = sysctl.split('\n').filter((l) => SYSCTL_LINE.test(l));
  return {
    time,
    files: new Map([
      ['iptables-save.txt', iptables],
      ['ip-addr.txt', addr],
      ['ip-link.txt', link],
      ['ip-route.txt', route],
      ['ip-6-route.txt', route6],
      ['ip-rule.txt', rule],
      ['ip-6-rule.txt', rule6],
      ['sysctl.txt', `${sysctlLines.join('\n')}\n`],
      ['stat-rt_cache.txt', rtCache],
      ['stat-nf_conntrack.txt', ctStat],
      ['nf_conntrack.txt', conntrack],
      ['ipset-save.txt', ipset],
    ]),
  };
}

function write(dir: string, node: string, steps: readonly Step[], skip: ReadonlySet<string>): void {
  rmSync(dir, { recursive: true, force: true });
  for (const step of steps) {
    const stepDir = join(dir, node, step.time);
    mkdirSync(stepDir, { recursive: true });
    for (const [name, text] of step.files) if (!skip.has(name)) writeFileSync(join(stepDir, name), text);
  }
}

export async function captureSeed003(outDir: string): Promise<{ steps: number; dirs: string[] }> {
  assertLabPrerequisites();
  const lab = new Lab();
  try {
    const scenario = lbHealthCheckDropped(lab);
    const node = scenario.facts.node;
    await scenario.setup();
    const ipvsadm = scenario.cluster().ipvs(node)?.ipvsadm;
    if (ipvsadm === undefined) throw new Error(`${node} is not in IPVS mode`);
    const steps: Step[] = [await snapshot(lab, node)];
    steps[0]?.files.set('ipvsadm-Ln.txt', ipvsadm);
    const result = await scenario.drive({
      // The LB phase lasts 3 s (two 1.5 s probes, a SYN and its retransmission at 1 s each).
      duringHealthChecks: async () => {
        await sleep(1_300);
        steps.push(await snapshot(lab, node));
        await sleep(1_300);
        steps.push(await snapshot(lab, node));
      },
    });
    steps.push(await snapshot(lab, node));
    if (result.healthChecks.some((a) => a.status !== 'timeout') || result.conntrack.fromLoadBalancer.length > 0) {
      throw new Error(`the health checks were not dropped: ${JSON.stringify(result.healthChecks)}`);
    }
    const dirs = [join(outDir, TIMELINE), join(outDir, TIMELINE_NO_IPSET)];
    write(dirs[0] ?? '', node, steps, new Set());
    write(dirs[1] ?? '', node, steps, new Set(['ipset-save.txt']));
    return { steps: steps.length, dirs };
  } finally {
    await lab.teardown();
  }
}

if (import.meta.main) {
  const outDir = process.argv[2];
  if (!outDir) {
    process.stderr.write('usage: node test/lab/capture-seed-003.ts OUTDIR\n');
    process.exit(2);
  }
  captureSeed003(resolve(outDir)).then(
    ({ steps, dirs }) => process.stdout.write(`${steps} steps in ${dirs.join(' and ')}\n`),
    (err: unknown) => {
      process.stderr.write(`capture-seed-003: ${err instanceof Error ? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
