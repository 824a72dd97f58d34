// kube-proxy's own expected rulesets (kubernetes pkg/proxy/{iptables,nftables}/proxier_test.go,
// see test/fixtures/kube-proxy-tests/README.md), each loaded into a fresh network
// namespace the way kube-proxy loads it; `conntrail services --json` run inside that
// namespace must report exactly the Services the Go test set up (<fixture>.services.json).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { assertLabPrerequisites, findTool, Lab } from '../lab/netns.ts';
import { nodeBinary } from '../lab/traffic.ts';
import { cli } from './harness.ts';

const dir = new URL('../fixtures/kube-proxy-tests/', import.meta.url).pathname;

interface Frontend { address: string; port: number; kind: string }
interface Endpoint { address: string; port: number; terminating: boolean }
interface ServiceView {
  id: string;
  protocol: string;
  frontends: Frontend[];
  nodePorts: number[];
  localTrafficPolicy: boolean;
  internalLocal?: boolean;
  endpoints: Endpoint[];
}

interface Fixture {
  readonly name: string;
  readonly mode: 'iptables' | 'nftables';
  /** Restore inputs loaded in this order; the last one is the fixture itself. */
  readonly files: readonly string[];
  readonly expected: ServiceView[];
}

// iptables-TestSyncProxyRulesRepeated-step3 -> its steps 1, 2 and 3: kube-proxy's
// later syncs are partial `iptables-restore --noflush` inputs that only make sense on
// top of the earlier ones. nftables expected rulesets are full dumps: one file each.
function fixtures(): Fixture[] {
  const names = readdirSync(dir).filter((f) => f.endsWith('.rules')).map((f) => f.slice(0, -'.rules'.length));
  return names
    .map((name): Fixture => {
      const mode = name.startsWith('iptables-') ? 'iptables' : 'nftables';
      const step = /^(.*)-step(\d+)$/.exec(name);
      let files = [name];
      if (mode === 'iptables' && step) {
        const [, base, n] = step;
        files = Array.from({ length: Number(n) }, (_, i) => `${base}-step${i + 1}`);
      }
      const expected = JSON.parse(readFileSync(join(dir, `${name}.services.json`), 'utf8')) as ServiceView[];
      return { name, mode, files, expected };
    })
    .sort((a, b) => a.name.localeCompare(b.name, 'en', { numeric: true }));
}

const rules = (name: string): string => readFileSync(join(dir, `${name}.rules`), 'utf8');

const byString = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Only the fields the fixtures specify, in one order, so that sorting and extra fields in the CLI's output do not matter. */
function normalize(list: readonly ServiceView[], withInternalLocal: ReadonlySet<string>): ServiceView[] {
  return list
    .map((s) => ({
      id: s.id,
      protocol: s.protocol,
      frontends: (s.frontends ?? []).map((f) => ({ address: f.address, port: f.port, kind: f.kind })).sort((a, b) => byString(a.address, b.address) || a.port - b.port),
      nodePorts: [...(s.nodePorts ?? [])].sort((a, b) => a - b),
      localTrafficPolicy: s.localTrafficPolicy,
      ...(withInternalLocal.has(s.id) ? { internalLocal: s.internalLocal ?? false } : {}),
      endpoints: (s.endpoints ?? []).map((e) => ({ address: e.address, port: e.port, terminating: e.terminating })).sort((a, b) => byString(a.address, b.address) || a.port - b.port),
    }))
    .sort((a, b) => byString(a.id, b.id));
}

// The jumps from the builtin chains that kube-proxy adds with EnsureRule(Prepend, …)
// outside its iptables-restore input: iptablesJumpChains and iptablesKubeletJumpChains
// in pkg/proxy/iptables/proxier.go. The fixtures hold only the restore input.
const JUMPS: readonly (readonly [table: string, from: string, to: string, comment: string, extra: readonly string[]])[] = [
  ['filter', 'INPUT', 'KUBE-EXTERNAL-SERVICES', 'kubernetes externally-visible service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', 'FORWARD', 'KUBE-EXTERNAL-SERVICES', 'kubernetes externally-visible service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', 'INPUT', 'KUBE-NODEPORTS', 'kubernetes health check service ports', []],
  ['filter', 'FORWARD', 'KUBE-SERVICES', 'kubernetes service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', 'OUTPUT', 'KUBE-SERVICES', 'kubernetes service portals', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', 'FORWARD', 'KUBE-FORWARD', 'kubernetes forwarding rules', []],
  ['filter', 'INPUT', 'KUBE-PROXY-FIREWALL', 'kubernetes load balancer firewall', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', 'OUTPUT', 'KUBE-PROXY-FIREWALL', 'kubernetes load balancer firewall', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['filter', 'FORWARD', 'KUBE-PROXY-FIREWALL', 'kubernetes load balancer firewall', ['-m', 'conntrack', '--ctstate', 'NEW']],
  ['nat', 'OUTPUT', 'KUBE-SERVICES', 'kubernetes service portals', []],
  ['nat', 'PREROUTING', 'KUBE-SERVICES', 'kubernetes service portals', []],
  ['nat', 'POSTROUTING', 'KUBE-POSTROUTING', 'kubernetes postrouting rules', []],
  ['filter', 'INPUT', 'KUBE-FIREWALL', '', []],
  ['filter', 'OUTPUT', 'KUBE-FIREWALL', '', []],
];

const iptables = (cmd: string): string => findTool(`iptables-nft${cmd}`) ?? `iptables${cmd}`;

async function loadIptables(lab: Lab, ns: string, f: Fixture): Promise<void> {
  const inputs = f.files.map(rules);
  // `-m nfacct --nfacct-name X` needs the accounting object X to exist (kube-proxy
  // creates its counters at startup); without it iptables-restore fails with
  // "RULE_APPEND failed (No such file or directory)". Objects are per network namespace.
  const counters = [...new Set(inputs.flatMap((t) => [...t.matchAll(/--nfacct-name (\S+)/g)].map((m) => m[1] ?? '')))];
  if (counters.length > 0 && findTool('nfacct') === undefined) {
    throw new Error(`${f.name} uses nfacct counters (${counters.join(', ')}): the nfacct command is needed to create them (apt-get install nfacct)`);
  }
  for (const c of counters) await lab.exec(ns, ['nfacct', 'add', c]);
  for (const [i, input] of inputs.entries()) {
    await lab.exec(ns, [iptables('-restore'), '-w', '5', '--noflush', '--counters'], { input });
    if (i === 0) {
      for (const [table, from, to, comment, extra] of JUMPS) {
        await lab.exec(ns, [iptables(''), '-w', '5', '-t', table, '-I', from, ...extra, ...(comment ? ['-m', 'comment', '--comment', comment] : []), '-j', to]);
      }
    }
  }
  // Sanity: every chain the last input declares is there, every chain it deletes is gone.
  const save = (await lab.exec(ns, [iptables('-save')])).stdout;
  const last = inputs.at(-1) ?? '';
  const deleted = new Set([...last.matchAll(/^-X (\S+)$/gm)].map((m) => m[1]));
  const declared = [...last.matchAll(/^:(\S+) - \[0:0\]$/gm)].map((m) => m[1] ?? '').filter((c) => !deleted.has(c));
  expect(declared.length, `${f.name} declares no chain`).toBeGreaterThan(0);
  for (const c of declared) expect(save, `${f.name}: chain ${c} missing from iptables-save after loading`).toContain(`:${c} `);
  for (const c of deleted) expect(save, `${f.name}: chain ${c} should have been deleted (-X)`).not.toContain(`:${c} `);
}

/**
 * kube-proxy's expected nftables text is compared with a sorted dump in the Go
 * test, so it names chains before declaring them (`vmap { 0 : goto endpoint-… }`
 * above `add chain … endpoint-…`), and `nft -f` refuses those lines ("No such file
 * or directory"). The preamble is the file's own `add table|chain|set|map` lines,
 * in file order; `add` of an existing object is a no-op, so the file itself then
 * loads unchanged, in the same transaction.
 */
function nftPreamble(text: string): string {
  return text.split('\n').filter((l) => /^add (table|chain|set|map) /.test(l)).join('\n') + '\n';
}

async function loadNftables(lab: Lab, ns: string, f: Fixture): Promise<void> {
  const text = rules(f.name);
  await lab.exec(ns, ['nft', '-f', '-'], { input: nftPreamble(text) + text });
  const listing = (await lab.exec(ns, ['nft', 'list', 'ruleset'])).stdout;
  const chains = [...text.matchAll(/^add chain ip kube-proxy (\S+)/gm)].map((m) => m[1] ?? '');
  expect(chains.length, `${f.name} declares no chain`).toBeGreaterThan(0);
  for (const c of chains) expect(listing, `${f.name}: chain ${c} missing from nft list ruleset after loading`).toContain(`chain ${c} {`);
}

const labs: Lab[] = [];
afterEach(async () => {
  for (const l of labs.splice(0)) await l.teardown();
});

describe('conntrail services on kube-proxy\'s own expected rulesets', { timeout: 60_000 }, () => {
  /**
   * nftables mode writes an LB IP and an external IP the same way (a
   * `service-ips` element to the external chain); only an LB IP with
   * loadBalancerSourceRanges also gets a `firewall-ips` element. So without
   * the API the rules say `external` for an LB IP without source ranges: the
   * expectation (from the Go test's Service specs) is read that way here,
   * and only here. The collector names the kind from the API when it has it.
   */
  const rulesCanTell = (f: Fixture): ServiceView[] => {
    if (f.mode !== 'nftables') return [...f.expected];
    const text = f.files.map((n) => readFileSync(join(dir, `${n}.rules`), 'utf8')).join('\n');
    const firewalled = (address: string) => text.includes(`firewall-ips { ${address} .`);
    return f.expected.map((s) => ({ ...s, frontends: (s.frontends ?? []).map((fr) => (fr.kind === 'loadbalancer' && !firewalled(fr.address) ? { ...fr, kind: 'external' } : fr)) }));
  };

  for (const f of fixtures()) {
    it(`${f.name} (${f.files.length > 1 ? `steps 1-${f.files.length} loaded in order` : 'one load'})`, async () => {
      assertLabPrerequisites();
      const lab = new Lab();
      labs.push(lab);
      await lab.addNamespace('node');
      const ns = 'node';
      if (f.mode === 'iptables') await loadIptables(lab, ns, f);
      else await loadNftables(lab, ns, f);

      const res = await lab.exec(ns, [nodeBinary(), cli, 'services', '--json'], { check: false, timeoutMs: 30_000 });
      if (res.code !== 0) {
        expect.fail(`\`conntrail services --json\` exited ${res.code} in namespace ${lab.netns(ns)} (${f.name}); stderr:\n${res.stderr.trim().split('\n').slice(0, 3).join('\n')}`);
      }
      let got: unknown;
      try {
        got = JSON.parse(res.stdout);
      } catch (err) {
        expect.fail(`\`conntrail services --json\` did not print JSON (${String(err)}); stdout starts:\n${res.stdout.slice(0, 500)}`);
      }
      if (!Array.isArray(got)) expect.fail(`\`conntrail services --json\` printed ${typeof got}, not an array of Services`);
      const internal = new Set(f.expected.filter((s) => 'internalLocal' in s).map((s) => s.id));
      expect(normalize(got as ServiceView[], internal), `Services read back from ${f.name}`).toEqual(normalize(rulesCanTell(f), internal));
    });
  }
});
