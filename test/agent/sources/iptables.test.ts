import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { parsers } from '../../../agent/parsers.ts';
import { parseIptables } from '../../../agent/sources/iptables.ts';
import { indexByKey } from '../../../contract/diff.ts';
import type { IptablesChain, IptablesRecord, IptablesRule } from '../../../contract/records.ts';
import { sources } from '../../../contract/sources.ts';

const FIXTURES = new URL('../../fixtures/iptables-save/', import.meta.url);
const fixture = (name: string): string => readFileSync(new URL(name, FIXTURES), 'utf8');
const golden = (name: string): string => `../../fixtures/iptables-save/${name.replace(/\.txt$/, '')}.golden.json`;

const rulesOf = (records: readonly IptablesRecord[]): IptablesRule[] =>
  records.filter((r): r is IptablesRule => r.kind === 'rule');
const chainsOf = (records: readonly IptablesRecord[]): IptablesChain[] =>
  records.filter((r): r is IptablesChain => r.kind === 'chain');
const tablesOf = (records: readonly IptablesRecord[]): string[] => [...new Set(records.map((r) => r.table))];
const inChain = (records: readonly IptablesRecord[], chain: string): IptablesRule[] => rulesOf(records).filter((r) => r.chain === chain);
const dnatTargets = (records: readonly IptablesRecord[]): string[] =>
  rulesOf(records).filter((r) => r.target === 'DNAT').map((r) => r.toDestination ?? '?');

/** Parses one rule line and returns its record (the test fails if it is not one). */
function ruleOf(line: string): IptablesRule {
  const { records, problems } = parseIptables(line);
  expect(problems).toEqual([]);
  const [rule] = rulesOf(records);
  if (rule === undefined) throw new Error(`no rule parsed from ${line}`);
  return rule;
}

/** Every record decodes with the shared schema, the collector's trust boundary. */
function expectValidRecords(records: readonly IptablesRecord[]): void {
  for (const r of records) expect(sources.iptables.schema.decode(r, 'record')).toEqual({ ok: true, value: r });
}

describe('parseIptables on verbatim iptables-save dumps', () => {
  it('reads the EKS CNI node dump: 3 tables, 38 rules, the CNI CONNMARK and SNAT rules', async () => {
    const name = 'eks-2018-reinvent-cni-node-full-connmark-snat.txt';
    const result = parseIptables(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(tablesOf(records)).toEqual(['mangle', 'nat', 'filter']);
    expect(rulesOf(records)).toHaveLength(38);
    const natChains = chainsOf(records).filter((c) => c.table === 'nat').map((c) => c.chain);
    expect(natChains.filter((c) => c.startsWith('KUBE-SVC-'))).toHaveLength(3);
    expect(natChains.filter((c) => c.startsWith('KUBE-SEP-'))).toHaveLength(4);

    const mangle = rulesOf(records).filter((r) => r.table === 'mangle');
    expect(mangle.map((r) => [r.target, r.comment])).toEqual([['CONNMARK', 'AWS, primary ENI'], ['CONNMARK', 'AWS, primary ENI']]);
    expect(mangle[0]?.args.slice(-3)).toEqual(['CONNMARK', '--set-xmark', '0x80/0x80']);
    expect(mangle[1]?.args.slice(-6)).toEqual(['CONNMARK', '--restore-mark', '--nfmask', '0x80', '--ctmask', '0x80']);

    const snat = inChain(records, 'POSTROUTING').find((r) => r.target === 'SNAT');
    expect(snat).toMatchObject({ table: 'nat', destination: '! 192.168.0.0/16', comment: 'AWS, SNAT', position: 3 });
    expect(snat?.args.slice(-2)).toEqual(['--to-source', '192.168.4.93']);

    expect(inChain(records, 'KUBE-MARK-MASQ').map((r) => r.spec)).toEqual(['-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000']);
    expect(dnatTargets(records)).toEqual(['192.168.64.27:53', '192.168.64.27:53', '192.168.119.102:443', '192.168.154.135:443']);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads the EKS pod-to-service dump: default/hello has 7 endpoints with the kernel-rounded probabilities', async () => {
    const name = 'eks-2018-reinvent-pod2service-full-v1.4.21.txt';
    const result = parseIptables(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(tablesOf(records)).toEqual(['mangle', 'nat', 'filter']);
    expect(rulesOf(records)).toHaveLength(60);
    const natChains = chainsOf(records).filter((c) => c.table === 'nat').map((c) => c.chain);
    expect(natChains.filter((c) => c.startsWith('KUBE-SVC-'))).toHaveLength(4);
    expect(natChains.filter((c) => c.startsWith('KUBE-SEP-'))).toHaveLength(11);

    const hello = inChain(records, 'KUBE-SVC-TWVLBX4WCEZSIVWL');
    expect(hello.map((r) => r.comment)).toEqual(Array(7).fill('default/hello:'));
    expect(hello.map((r) => r.probability)).toEqual([
      0.14286000002, 0.16667000018, 0.20000000019, 0.25, 0.33332999982, 0.5, null,
    ]);
    expect(hello.map((r) => r.position)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(hello[6]).toMatchObject({ target: 'KUBE-SEP-ZXNKJZGHRUCBYABC', goto: false, args: ['-m', 'comment', '--comment', 'default/hello:', '-j', 'KUBE-SEP-ZXNKJZGHRUCBYABC'] });

    const kubernetes = inChain(records, 'KUBE-SVC-NPX46M4PTMTKRN6Y');
    const affinity = kubernetes.filter((r) => r.args.join(' ').includes('-m recent --rcheck --seconds 10800'));
    expect(affinity.map((r) => r.target)).toEqual(['KUBE-SEP-AIEIM4BQDHX5EYIM', 'KUBE-SEP-5FZSVYKRYDUCHFON']);
    expect(new Set(kubernetes.map((r) => r.target))).toEqual(new Set(['KUBE-SEP-AIEIM4BQDHX5EYIM', 'KUBE-SEP-5FZSVYKRYDUCHFON']));

    const dns = rulesOf(records).filter((r) => r.toDestination === '192.168.179.184:53');
    expect(dns.map((r) => r.protocol)).toEqual(['tcp', 'udp']);
    expect(dnatTargets(records)).toContain('192.168.74.164:443');
    const helloClusterIp = inChain(records, 'KUBE-SERVICES').find((r) => r.comment === 'default/hello: cluster IP');
    expect(helloClusterIp).toMatchObject({ destination: '10.100.204.119/32', protocol: 'tcp', dport: '80', target: 'KUBE-SVC-TWVLBX4WCEZSIVWL' });

    const prerouting = chainsOf(records).find((c) => c.table === 'mangle' && c.chain === 'PREROUTING');
    expect(prerouting).toEqual({
      kind: 'chain', backend: null, family: 'ipv4', table: 'mangle', chain: 'PREROUTING', policy: 'ACCEPT',
      packets: 123097, bytes: 69451088, raw: ':PREROUTING ACCEPT [123097:69451088]',
    });
    expect(chainsOf(records).find((c) => c.chain === 'KUBE-SERVICES')).toMatchObject({ policy: null, packets: 0, bytes: 0 });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads the kind excerpt that starts mid-dump as table "unknown" without complaining', async () => {
    const name = 'k8s-pr114470-kind-new-kube-proxy-ext-random-fully-partial.txt';
    const result = parseIptables(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(records).toHaveLength(12);
    expect(tablesOf(records)).toEqual(['unknown']);

    const nodePort = inChain(records, 'KUBE-NODEPORTS');
    expect(nodePort).toEqual([expect.objectContaining({
      comment: 'default/nodeport-service', protocol: 'tcp', dport: '31964', target: 'KUBE-EXT-QATUYZLPU4I4HE4S',
    })]);
    expect(inChain(records, 'KUBE-EXT-QATUYZLPU4I4HE4S').map((r) => r.target)).toEqual([
      'KUBE-SVC-QATUYZLPU4I4HE4S', 'KUBE-MARK-MASQ', 'KUBE-SVC-QATUYZLPU4I4HE4S',
    ]);
    expect(inChain(records, 'KUBE-EXT-QATUYZLPU4I4HE4S')[0]?.source).toBe('10.244.0.0/16');
    const postrouting = inChain(records, 'KUBE-POSTROUTING');
    expect(postrouting.map((r) => r.spec)).toEqual([
      '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
      '-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0',
      '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully',
    ]);
    expect(postrouting[2]?.args.slice(-3)).toEqual(['-j', 'MASQUERADE', '--random-fully']);
    expect(dnatTargets(records)).toEqual(['10.244.0.3:53']);
    expect(inChain(records, 'KUBE-SEP-6E7XQMQ4RAYOWTTM')[1]).toMatchObject({ comment: 'kube-system/kube-dns:dns', protocol: 'udp' });
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('reads the 2015 userspace-era dump whose filter table ends with COMMIT and no "# Completed" line', async () => {
    const name = 'k8s-proxier-test-2015-userspace-era-v1.4.21-multitable.txt';
    const result = parseIptables(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(tablesOf(records)).toEqual(['nat', 'filter']);
    expect(rulesOf(records)).toHaveLength(24);
    expect(chainsOf(records).find((c) => c.table === 'nat' && c.chain === 'PREROUTING')).toMatchObject({ policy: 'ACCEPT', packets: 2, bytes: 138 });
    const svcChains = chainsOf(records).filter((c) => c.chain.startsWith('KUBE-SVC-')).map((c) => c.chain);
    expect(svcChains).toEqual([1, 2, 3, 4, 5, 6].map((d) => `KUBE-SVC-${String(d).repeat(16)}`));
    const portals = inChain(records, 'KUBE-PORTALS-CONTAINER');
    expect(portals.map((r) => [r.destination, r.protocol, r.dport])).toEqual([
      ['10.247.0.1/32', 'tcp', '443'], ['10.247.0.10/32', 'udp', '53'], ['10.247.0.10/32', 'tcp', '53'],
    ]);
    expect(portals.every((r) => r.args.join(' ').includes('-m state --state NEW'))).toBe(true);
    expect(inChain(records, 'FORWARD').map((r) => r.table)).toEqual(['filter', 'filter', 'filter', 'filter']);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseIptables on `iptables-save | grep` excerpts pasted into write-ups', () => {
  // Both posts grep one Service out of the dump; seed 001 pasted it indented
  // inside a markdown list, with its shell prompt and a note above it.
  it('finds the NodePort, ClusterIP and the 3 DNAT endpoints of nginx-demo in seed 000', async () => {
    const name = 'seed-000-grep-service-nginx-demo.txt';
    const result = parseIptables(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([{
      line: 1,
      text: '[ec2-user@ip-192-168-55-245 ~]$ sudo iptables-save | grep "service-nginx-demo"',
      reason: 'not an iptables-save line (expected *table, :CHAIN, [counters] -A rule, COMMIT or a # header)',
    }]);
    expectValidRecords(records);
    expect(rulesOf(records)).toHaveLength(12);
    expect(tablesOf(records)).toEqual(['unknown']);
    expect(inChain(records, 'KUBE-NODEPORTS')).toEqual([expect.objectContaining({
      protocol: 'tcp', dport: '30161', comment: 'nginx-demo/service-nginx-demo', target: 'KUBE-SVC-WGW5ZPXP7HZEBG5V',
    })]);
    expect(inChain(records, 'KUBE-SERVICES')).toEqual([expect.objectContaining({
      destination: '10.100.135.233/32', dport: '80', comment: 'nginx-demo/service-nginx-demo cluster IP', target: 'KUBE-SVC-WGW5ZPXP7HZEBG5V',
    })]);
    // The same three endpoints `kubectl describe svc` lists in the post.
    expect(dnatTargets(records)).toEqual(['192.168.21.160:80', '192.168.44.248:80', '192.168.73.88:80']);
    expect(inChain(records, 'KUBE-SVC-WGW5ZPXP7HZEBG5V').map((r) => r.probability)).toEqual([null, 0.33333333349, 0.5, null]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });

  it('tolerates the indentation of seed 001 and reports its note and prompt lines', async () => {
    const name = 'seed-001-grep-service-nginx-demo.txt';
    const result = parseIptables(fixture(name));
    const { records, problems } = result;
    expect(problems).toEqual([
      { line: 1, text: '        # Kubernetes Service will update the following iptables rules in every node.', reason: 'a `#` line iptables-save does not print (an annotation?)' },
      { line: 2, text: '        $ sudo iptables-save | grep "service-nginx-demo"', reason: 'not an iptables-save line (expected *table, :CHAIN, [counters] -A rule, COMMIT or a # header)' },
    ]);
    expectValidRecords(records);
    const rules = rulesOf(records);
    expect(rules).toHaveLength(12);
    expect(rules.every((r) => r.raw.startsWith('        -A ') && r.spec.startsWith('-A '))).toBe(true);
    expect(inChain(records, 'KUBE-NODEPORTS').map((r) => [r.dport, r.target])).toEqual([
      ['31919', 'KUBE-MARK-MASQ'], ['31919', 'KUBE-SVC-7D7VEXWNCKBQRZ7W'],
    ]);
    expect(inChain(records, 'KUBE-SERVICES')).toEqual([expect.objectContaining({
      destination: '10.100.235.20/32', dport: '80', comment: 'nginx-demo/service-nginx-demo: cluster IP', target: 'KUBE-SVC-7D7VEXWNCKBQRZ7W',
    })]);
    expect(dnatTargets(records)).toEqual(['192.168.39.2:80', '192.168.16.142:80', '192.168.49.70:80']);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseIptables on rules captured in a lab namespace', () => {
  // lab-capture.sh loads lab-kube-proxy-restore-input.txt with
  // `iptables-restore --noflush --counters`, adds kube-proxy's jump rules from
  // the builtin chains with `iptables -I`, and saves with `iptables-save -c`.
  const input = parseIptables(fixture('lab-kube-proxy-restore-input.txt'));
  const nftSave = parseIptables(fixture('lab-iptables-save-c.txt'), 'nft');
  const legacySave = parseIptables(fixture('lab-iptables-legacy-save-c.txt'), 'legacy');

  /** What must survive a round trip through the kernel, whatever the dialect. */
  const meaning = (r: IptablesRule) => ({
    table: r.table, chain: r.chain, position: r.position, protocol: r.protocol, source: r.source,
    destination: r.destination, dport: r.dport, comment: r.comment, target: r.target, goto: r.goto,
    toDestination: r.toDestination,
  });
  const userChainRules = (records: readonly IptablesRecord[]) =>
    rulesOf(records).filter((r) => r.chain.startsWith('KUBE-'));

  it('reads kube-proxy\'s restore dialect: bare comments, -m tcp -p tcp, addresses without /32, a KUBE-FW rule without -j', async () => {
    const { records, problems } = input;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(tablesOf(records)).toEqual(['filter', 'nat']);
    expect(rulesOf(records)).toHaveLength(34);
    expect(chainsOf(records).every((c) => c.policy === null)).toBe(true);
    const sep = inChain(records, 'KUBE-SEP-NW5VICAF3Z2QABHQ');
    expect(sep.map(meaning)).toEqual([
      { table: 'nat', chain: 'KUBE-SEP-NW5VICAF3Z2QABHQ', position: 1, protocol: null, source: '10.244.1.5/32', destination: null, dport: null, comment: 'demo/web:http', target: 'KUBE-MARK-MASQ', goto: false, toDestination: null },
      { table: 'nat', chain: 'KUBE-SEP-NW5VICAF3Z2QABHQ', position: 2, protocol: 'tcp', source: null, destination: null, dport: null, comment: 'demo/web:http', target: 'DNAT', goto: false, toDestination: '10.244.1.5:8080' },
    ]);
    expect(inChain(records, 'KUBE-FW-XRY76EGRC3BSCIIJ')[1]).toMatchObject({
      comment: 'other traffic to demo/web:http will be dropped by KUBE-PROXY-FIREWALL', target: null, goto: false,
    });
    expect(inChain(records, 'KUBE-MARK-MASQ')[0]?.args).toEqual(['-j', 'MARK', '--or-mark', '0x4000']);
    expect(inChain(records, 'KUBE-SVC-TCOU7JCQXEZGVUNU').map((r) => r.probability)).toEqual([null, 0.3333333333, 0.5, null]);
    await expect(JSON.stringify(input, null, 2) + '\n').toMatchFileSnapshot(golden('lab-kube-proxy-restore-input.txt'));
  });

  it('reads real `iptables-save -c` output of both backends, counters included', async () => {
    for (const [result, backend] of [[nftSave, 'nft'], [legacySave, 'legacy']] as const) {
      expect(result.problems).toEqual([]);
      expectValidRecords(result.records);
      expect(result.records.every((r) => r.backend === backend)).toBe(true);
      expect(rulesOf(result.records)).toHaveLength(41);
      expect(rulesOf(result.records).every((r) => r.packets !== null && r.bytes !== null)).toBe(true);
      // 3 UDP datagrams and 2 TCP SYNs were sent to the two ClusterIPs.
      const services = inChain(result.records, 'KUBE-SERVICES');
      expect(services.map((r) => [r.comment, r.packets])).toEqual([
        ['demo/web:http cluster IP', 2], ['demo/web:http loadbalancer IP', 0], ['kube-system/kube-dns:dns cluster IP', 3],
        ['kubernetes service nodeports; NOTE: this must be the last rule in this chain', 0],
      ]);
      const dnsEndpoints = rulesOf(result.records).filter((r) => r.target === 'DNAT' && r.protocol === 'udp');
      expect(dnsEndpoints.reduce((n, r) => n + (r.packets ?? 0), 0)).toBe(3);
    }
    // The nft backend keeps no policy counters; legacy counted the 5 packets leaving.
    expect(chainsOf(nftSave.records).find((c) => c.table === 'nat' && c.chain === 'POSTROUTING')).toMatchObject({ packets: 0 });
    expect(chainsOf(legacySave.records).find((c) => c.table === 'nat' && c.chain === 'POSTROUTING')).toMatchObject({ packets: 5, bytes: 210 });
    await expect(JSON.stringify(nftSave, null, 2) + '\n').toMatchFileSnapshot(golden('lab-iptables-save-c.txt'));
    await expect(JSON.stringify(legacySave, null, 2) + '\n').toMatchFileSnapshot(golden('lab-iptables-legacy-save-c.txt'));
  });

  it('gives the same rules for the restore input and for what iptables-save printed back', () => {
    const byKey = (records: readonly IptablesRecord[]) =>
      new Map(userChainRules(records).map((r) => [`${r.table} ${r.chain} ${r.position}`, r]));
    const restored = byKey(input.records);
    for (const saved of [nftSave, legacySave]) {
      const back = byKey(saved.records);
      expect([...back.keys()].sort()).toEqual([...restored.keys()].sort());
      for (const [key, r] of restored) {
        const s = back.get(key);
        expect(s && meaning(s), key).toEqual(meaning(r));
        // The kernel stores lround(2^31 * p): 0.3333333333 is printed back as 0.33333333349.
        if (r.probability === null) expect(s?.probability).toBeNull();
        else expect(s?.probability).toBeCloseTo(r.probability, 9);
      }
      // The restore dialect's --or-mark/--xor-mark come back as --set-xmark (libxt_MARK).
      expect(inChain(saved.records, 'KUBE-MARK-MASQ')[0]?.args).toEqual(['-j', 'MARK', '--set-xmark', '0x4000/0x4000']);
      expect(inChain(saved.records, 'KUBE-POSTROUTING')[1]?.args).toEqual(['-j', 'MARK', '--set-xmark', '0x4000/0x0']);
      const chains = (records: readonly IptablesRecord[]) => chainsOf(records).filter((c) => c.chain.startsWith('KUBE-')).map((c) => `${c.table} ${c.chain}`).sort();
      expect(chains(saved.records)).toEqual(chains(input.records));
    }
  });

  it('skips the nft variant\'s legacy-tables warning pasted with 2>&1', async () => {
    const name = 'lab-iptables-nft-save-c-legacy-warning.txt';
    const result = parseIptables(fixture(name), 'nft');
    expect(result.problems).toEqual([]);
    expect(chainsOf(result.records).map((c) => `${c.table} ${c.chain} ${c.policy ?? '-'}`)).toEqual([
      'filter INPUT ACCEPT', 'filter FORWARD ACCEPT', 'filter OUTPUT ACCEPT', 'filter KUBE-FORWARD -',
    ]);
    await expect(JSON.stringify(result, null, 2) + '\n').toMatchFileSnapshot(golden(name));
  });
});

describe('parseIptables on ip6tables rules captured in a lab namespace', () => {
  // lab-capture-ipv6.sh loads lab-kube-proxy-restore-input-ipv6.txt with
  // `ip6tables-restore --noflush --counters`, adds the jump rules, sends 3 UDP
  // datagrams and 2 TCP SYNs to the ClusterIPs, and saves with `ip6tables-save -c`.
  const input = parseIptables(fixture('lab-kube-proxy-restore-input-ipv6.txt'), null, 'ipv6');
  const saved = parseIptables(fixture('lab-ip6tables-save-c.txt'), 'nft', 'ipv6');

  it('reads real `ip6tables-save -c` output: /128 addresses, bracketed DNAT targets, the icmp6 REJECT', async () => {
    const { records, problems } = saved;
    expect(problems).toEqual([]);
    expectValidRecords(records);
    expect(records.every((r) => r.family === 'ipv6' && r.backend === 'nft')).toBe(true);
    expect(tablesOf(records)).toEqual(['filter', 'nat']);
    expect(rulesOf(records)).toHaveLength(28);
    expect(inChain(records, 'KUBE-SERVICES').filter((r) => r.table === 'nat').map((r) => [r.destination, r.protocol, r.dport, r.packets])).toEqual([
      ['fd00:10:96::100a/128', 'tcp', '80', 2], ['fd00:10:96::a/128', 'udp', '53', 3], [null, null, null, 0],
    ]);
    expect(dnatTargets(records)).toEqual(['[fd00:10:244::3]:53', '[fd00:10:244:1::5]:8080', '[fd00:10:244:2::7]:8080']);
    expect(inChain(records, 'KUBE-SVC-XRY76EGRC3BSCIIJ')[0]).toMatchObject({ source: '! fd00:10:244::/56', target: 'KUBE-MARK-MASQ' });
    expect(inChain(records, 'KUBE-SVC-XRY76EGRC3BSCIIJ').map((r) => r.packets)).toEqual([0, 1, 1]);
    // kube-proxy writes a bare `-j REJECT`; ip6tables-save prints the IPv6 default (libip6t_REJECT).
    const reject = rulesOf(records).find((r) => r.target === 'REJECT');
    expect(reject).toMatchObject({ table: 'filter', comment: 'demo/empty:http has no endpoints', destination: 'fd00:10:96::2222/128' });
    expect(reject?.args.slice(-2)).toEqual(['--reject-with', 'icmp6-port-unreachable']);
    await expect(JSON.stringify(saved, null, 2) + '\n').toMatchFileSnapshot(golden('lab-ip6tables-save-c.txt'));
    await expect(JSON.stringify(input, null, 2) + '\n').toMatchFileSnapshot(golden('lab-kube-proxy-restore-input-ipv6.txt'));
  });

  it('gives the same rules for the IPv6 restore input and for what ip6tables-save printed back', () => {
    expect(input.problems).toEqual([]);
    const meaning = (r: IptablesRule) => [r.table, r.chain, r.protocol, r.source, r.destination, r.dport, r.comment, r.target, r.toDestination];
    const byKey = (records: readonly IptablesRecord[]) =>
      new Map(rulesOf(records).filter((r) => r.chain.startsWith('KUBE-')).map((r) => [`${r.table} ${r.chain} ${r.position}`, meaning(r)]));
    expect(byKey(saved.records)).toEqual(byKey(input.records));
  });

  it('keeps IPv4 and IPv6 rules with the same text apart', () => {
    const v4 = parseIptables(fixture('lab-iptables-save-c.txt'), 'nft');
    const both = [...v4.records, ...saved.records];
    const same = (r: IptablesRecord) => r.kind === 'rule' && r.spec === '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN';
    expect(both.filter(same).map((r) => r.family)).toEqual(['ipv4', 'ipv6']);
    expect(indexByKey(both, sources.iptables).duplicates).toBe(0);
  });

  it('tells `conntrail parse iptables` an ip6tables dump by its header', () => {
    expect(new Set(parsers.iptables(fixture('lab-ip6tables-save-c.txt')).records.map((r) => r.family))).toEqual(new Set(['ipv6']));
    expect(new Set(parsers.iptables(fixture('lab-iptables-save-c.txt')).records.map((r) => r.family))).toEqual(new Set(['ipv4']));
  });
});

describe('parseIptables, one line at a time', () => {
  it.each([
    ['counters with -c', '[5:210] -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
      { packets: 5, bytes: 210, spec: '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES', comment: 'kubernetes service portals' }],
    ['counters as `iptables -S -v` prints them', '-A KUBE-SVC-X ! -s 10.42.0.0/16 -d 10.43.143.108/32 -p tcp -m tcp --dport 80 -c 7 420 -j KUBE-MARK-MASQ',
      { packets: 7, bytes: 420, spec: '-A KUBE-SVC-X ! -s 10.42.0.0/16 -d 10.43.143.108/32 -p tcp -m tcp --dport 80 -j KUBE-MARK-MASQ', source: '! 10.42.0.0/16' }],
    ['no counters', '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000', { packets: null, bytes: null, target: 'MARK' }],
    ['a goto', '-A KUBE-SERVICES -d 10.0.0.1/32 -g KUBE-SVC-X', { target: 'KUBE-SVC-X', goto: true }],
    ['a counting rule without a jump', '-A KUBE-FW-X -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"', { target: null, goto: false }],
    ['escaped quotes and backslashes in a comment', String.raw`-A X -m comment --comment "say \"hi\" to C:\\dir" -j ACCEPT`, { comment: String.raw`say "hi" to C:\dir`, target: 'ACCEPT' }],
    ['a bare comment of the restore dialect', '-A KUBE-SEP-X -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ', { comment: 'ns1/svc1:p80', source: '10.180.0.1/32' }],
    ['the old `-s ! addr` spelling', '-A INPUT -s ! 10.0.0.0/8 -j DROP', { source: '! 10.0.0.0/8' }],
    ['a negated protocol and port', '-A INPUT ! -p udp -m tcp ! --dport 22 -j DROP', { protocol: '! udp', dport: '! 22' }],
    ['multiport ports', '-A INPUT -p tcp -m multiport --dports 80,443 -j ACCEPT', { dport: '80,443' }],
    ['a dotted netmask', '-A INPUT -s 10.1.2.0/255.255.255.0 -j ACCEPT', { source: '10.1.2.0/24' }],
    ['IPv6 written in full', '-A INPUT -d 2001:0db8:0000:0000:0000:0000:0000:0001 -j ACCEPT', { destination: '2001:db8::1/128' }],
    ['an IPv6 DNAT target', '-A KUBE-SEP-X -p tcp -j DNAT --to-destination [fd00:10:0:0::5]:8080', { toDestination: '[fd00:10::5]:8080' }],
    ['a host name kept as written', '-A OUTPUT -d metadata.google.internal -j DROP', { destination: 'metadata.google.internal' }],
    ['spaces and tabs between tokens', '-A  INPUT\t-j   ACCEPT', { spec: '-A INPUT -j ACCEPT', args: ['-j', 'ACCEPT'] }],
  ] as const)('reads a rule with %s', (_what, line, expected) => {
    const rule = ruleOf(line);
    expect(rule).toMatchObject({ ...expected, raw: line });
  });

  it.each([
    ['a half line cut inside a quote', '-A KUBE-SVC-X -m comment --comment "nginx-demo/servi', 'unterminated quote (a cut line?)'],
    ['a jump without its target', '-A KUBE-SERVICES -d 10.0.0.1/32 -j', '`-j` has no value (a cut line?)'],
    ['a rule without a chain', '-A', '`-A` without a chain name'],
    ['an insert command', '-I INPUT 1 -j ACCEPT', 'iptables command `-I` does not list a rule or a chain'],
    ['malformed counters', '[12:] -A INPUT -j ACCEPT', 'not an iptables-save line (expected *table, :CHAIN, [counters] -A rule, COMMIT or a # header)'],
    ['a markdown fence', '```bash', 'not an iptables-save line (expected *table, :CHAIN, [counters] -A rule, COMMIT or a # header)'],
    ['an ellipsis', '...', 'not an iptables-save line (expected *table, :CHAIN, [counters] -A rule, COMMIT or a # header)'],
    ['a poster\'s comment', '# rules for the web service', 'a `#` line iptables-save does not print (an annotation?)'],
    ['a chain line without a policy', ':KUBE-SERVICES', '`:` chain line without a policy'],
    ['a chain line with broken counters', ':INPUT ACCEPT [1:x]', '`:` chain line with malformed [packets:bytes]'],
    ['a probability that is not a number', '-A X -m statistic --mode random --probability 0.5x -j Y', '`--probability 0.5x` is not a number'],
  ])('reports %s as a problem with its line number', (_what, line, reason) => {
    const { records, problems } = parseIptables(`*nat\n-A A -j B\n${line}\n-A A -j C\nCOMMIT\n`);
    expect(problems).toEqual([{ line: 3, text: line, reason }]);
    expect(rulesOf(records).map((r) => [r.target, r.position])).toEqual([['B', 1], ['C', 2]]);
  });

  it('keeps an annotated rule but reports the annotation', () => {
    const line = '-A KUBE-SEP-X -p tcp -j DNAT --to-destination 10.0.0.5:80   <-- the dead pod';
    const { records, problems } = parseIptables(line);
    expect(problems).toEqual([{ line: 1, text: line, reason: 'trailing annotation after the rule (ignored)' }]);
    expect(rulesOf(records)[0]).toMatchObject({ toDestination: '10.0.0.5:80', spec: '-A KUBE-SEP-X -p tcp -j DNAT --to-destination 10.0.0.5:80', raw: line });
  });

  it.each([
    ['# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sun Nov 22 07:53:13 2026'],
    ['# Completed on Fri Aug  7 14:47:37 2015'],
    ["# Table `nat' is incompatible, use 'nft' tool."],
    ['# Warning: iptables-legacy tables present, use iptables-legacy-save to see them'],
    ['COMMIT'],
    ['-X KUBE-SEP-STALE'],
    [''],
    ['   \t'],
  ])('skips %j silently', (line) => {
    expect(parseIptables(`${line}\n`)).toEqual({ records: [], problems: [] });
  });

  it('counts positions per table and chain, starting again with each table block', () => {
    const text = '*nat\n-A A -j X\n-A B -j X\n-A A -j Y\nCOMMIT\n*filter\n-A A -j Z\nCOMMIT\n*nat\n-A A -j W\nCOMMIT\n';
    expect(rulesOf(parseIptables(text).records).map((r) => `${r.table} ${r.chain}#${r.position} ${r.target}`)).toEqual([
      'nat A#1 X', 'nat B#1 X', 'nat A#2 Y', 'filter A#1 Z', 'nat A#1 W',
    ]);
  });

  it('reads chains listed with -N and -P as `iptables -S` prints them', () => {
    const { records, problems } = parseIptables('-P INPUT DROP\n-N KUBE-SERVICES\n');
    expect(problems).toEqual([]);
    expect(chainsOf(records).map((c) => [c.chain, c.policy])).toEqual([['INPUT', 'DROP'], ['KUBE-SERVICES', null]]);
  });

  it('strips CRLF line ends but keeps trailing spaces in raw', () => {
    const { records } = parseIptables('*nat\r\n-A A -j X  \r\n');
    expect(rulesOf(records)[0]).toMatchObject({ raw: '-A A -j X  ', spec: '-A A -j X', table: 'nat' });
  });

  it('never throws on arbitrary input', () => {
    let seed = 42;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
    const alphabet = ['-A ', '-j ', '"', '\\', ' ', '\t', '\n', '[', ']', ':', '!', '*', '#', '-c ', '1', 'x', '<--', '-s ', '::1', '/'];
    for (let n = 0; n < 300; n++) {
      let text = '';
      for (let k = 0; k < 80; k++) text += alphabet[Math.floor(rand() * alphabet.length)];
      const result = parseIptables(text);
      for (const p of result.problems) expect(p.line).toBeGreaterThan(0);
      expectValidRecords(result.records);
    }
  });

  // Speed is measured in `npm run bench`, not asserted here: a timed unit test fails on a busy machine.
  it('parses 20k generated rules, one record each, with no problem', () => {
    const line = '[1:60] -A KUBE-SEP-NW5VICAF3Z2QABHQ -p tcp -m comment --comment "demo/web:http" -m tcp -j DNAT --to-destination 10.244.1.5:8080';
    const text = `*nat\n${Array.from({ length: 20_000 }, (_, i) => line.replace('NW5', `N${i}`)).join('\n')}\nCOMMIT\n`;
    const { records, problems } = parseIptables(text);
    expect(records).toHaveLength(20_000);
    expect(problems).toEqual([]);
  });
});
