// What `kubectl apply -k manifests/` would create: rendered by the real
// kubectl, every object validated against the Kubernetes OpenAPI schema
// (kubernetes-models), and the least-privilege settings the issue asks for
// checked one by one.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { pino } from 'pino';
import { AgentMetrics } from '../../agent/metrics.ts';
import { CollectorMetrics } from '../../collector/api/metrics.ts';
import { Collector } from '../../collector/receive/collector.ts';

type Obj = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> }; [k: string]: unknown };

const root = new URL('../..', import.meta.url).pathname;

function render(): Obj[] {
  let text: string;
  try {
    text = execFileSync('kubectl', ['kustomize', `${root}manifests`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new Error('kubectl not installed: run npm run setup (it installs Debian kubernetes-client where there is no kubectl)');
    throw new Error(`kubectl kustomize manifests/ failed: ${e.stderr ?? e.message}`);
  }
  return parseAllDocuments(text).map((d) => d.toJS() as Obj);
}

/** The kubernetes-models class for an object: `kubernetes-models/<group>/<version>/<Kind>` (core objects under `v1`). */
async function modelOf(o: Obj): Promise<new (data: unknown) => { validate(): void }> {
  const path = `kubernetes-models/${o.apiVersion}/${o.kind}`;
  const mod = (await import(path)) as Record<string, new (data: unknown) => { validate(): void }>;
  const model = mod[o.kind];
  if (model === undefined) throw new Error(`${path} has no ${o.kind}`);
  return model;
}

const objects = render();
const find = (kind: string, name: string): Obj => {
  const o = objects.find((x) => x.kind === kind && x.metadata.name === name);
  if (o === undefined) throw new Error(`no ${kind} ${name} in the rendered manifests`);
  return o;
};
type Container = { name: string; image: string; args?: string[]; volumeMounts?: { name: string; mountPath: string; readOnly?: boolean }[]; env?: { name: string; valueFrom?: { fieldRef?: { fieldPath: string } } }[]; securityContext?: Record<string, unknown>; resources?: { requests?: Record<string, string>; limits?: Record<string, string> }; livenessProbe?: unknown; readinessProbe?: unknown };
type Volume = { name: string; secret?: { secretName: string }; projected?: { sources: { serviceAccountToken?: { audience?: string; expirationSeconds?: number; path: string }; secret?: unknown }[] } };
type PodSpec = { containers: Container[]; volumes?: Volume[]; hostNetwork?: boolean; tolerations?: Record<string, string>[]; serviceAccountName?: string; automountServiceAccountToken?: boolean; securityContext?: Record<string, unknown> };
const podSpec = (o: Obj): PodSpec => (o.spec as { template: { spec: PodSpec } }).template.spec;
const agent = find('DaemonSet', 'conntrail-agent');
const collector = find('Deployment', 'conntrail-collector');
const workloads = [agent, collector];

describe('manifests/', () => {
  it('renders the namespace, both ServiceAccounts, RBAC, the collector and its Service, and the agent', () => {
    expect(objects.map((o) => `${o.kind}/${o.metadata.name}`).sort()).toEqual([
      'ClusterRole/conntrail-collector',
      'ClusterRoleBinding/conntrail-collector',
      'DaemonSet/conntrail-agent',
      'Deployment/conntrail-collector',
      'Namespace/conntrail',
      'PersistentVolumeClaim/conntrail-collector-data',
      'Service/conntrail-collector',
      'ServiceAccount/conntrail-agent',
      'ServiceAccount/conntrail-collector',
    ]);
  });

  it.each(objects.map((o) => [`${o.kind}/${o.metadata.name}`, o] as const))('%s validates against the Kubernetes OpenAPI schema', async (_name, o) => {
    const Model = await modelOf(o);
    expect(() => new Model(o).validate()).not.toThrow();
  });

  it('the schema check rejects a broken object (a capability list written as a string)', async () => {
    const broken = structuredClone(agent);
    const c = podSpec(broken).containers[0] as Container;
    c.securityContext = { ...c.securityContext, capabilities: { add: 'NET_ADMIN' } };
    const Model = await modelOf(broken);
    expect(() => new Model(broken).validate()).toThrow(/capabilities\/add must be array/);
  });

  it('puts every namespaced object in conntrail', () => {
    for (const o of objects) {
      if (o.kind === 'Namespace' || o.kind === 'ClusterRole' || o.kind === 'ClusterRoleBinding') expect(o.metadata.namespace, o.kind).toBeUndefined();
      else expect(o.metadata.namespace, `${o.kind}/${o.metadata.name}`).toBe('conntrail');
    }
  });

  it('grants the collector get/list/watch on Services, EndpointSlices, Pods and Nodes, create on TokenReviews, create and patch on events.k8s.io Events, and nothing else', () => {
    const role = find('ClusterRole', 'conntrail-collector') as Obj & { rules: { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[]; nonResourceURLs?: string[] }[] };
    const grants = role.rules.flatMap((r) => r.apiGroups.flatMap((g) => r.resources.flatMap((res) => r.verbs.map((v) => `${g}/${res}:${v}`)))).sort();
    expect(grants).toEqual(['/nodes:get', '/nodes:list', '/nodes:watch', '/pods:get', '/pods:list', '/pods:watch', '/services:get', '/services:list', '/services:watch', 'authentication.k8s.io/tokenreviews:create', 'discovery.k8s.io/endpointslices:get', 'discovery.k8s.io/endpointslices:list', 'discovery.k8s.io/endpointslices:watch', 'events.k8s.io/events:create', 'events.k8s.io/events:patch']);
    expect(role.rules.some((r) => r.resourceNames !== undefined)).toBe(false);
    expect(role.rules.some((r) => r.nonResourceURLs !== undefined)).toBe(false);
    const binding = find('ClusterRoleBinding', 'conntrail-collector') as Obj & { roleRef: { kind: string; name: string }; subjects: { kind: string; name: string; namespace: string }[] };
    expect(binding.roleRef).toMatchObject({ kind: 'ClusterRole', name: 'conntrail-collector' });
    expect(binding.subjects).toEqual([{ kind: 'ServiceAccount', name: 'conntrail-collector', namespace: 'conntrail' }]);
    // Nothing binds the agent's account to anything.
    expect(objects.filter((o) => o.kind.endsWith('Binding')).flatMap((b) => (b as Obj & { subjects: { name: string }[] }).subjects.map((s) => s.name))).not.toContain('conntrail-agent');
  });

  it('names the collector pod in its Events (POD_NAME from the downward API, their reportingInstance)', () => {
    const c = podSpec(collector).containers.find((x) => x.name === 'collector');
    expect(c?.env?.find((e) => e.name === 'POD_NAME')?.valueFrom?.fieldRef?.fieldPath).toBe('metadata.name');
  });

  it('gives the agent no API token at all', () => {
    expect((find('ServiceAccount', 'conntrail-agent') as Obj & { automountServiceAccountToken?: boolean }).automountServiceAccountToken).toBe(false);
    expect(podSpec(agent).serviceAccountName).toBe('conntrail-agent');
    expect(podSpec(agent).automountServiceAccountToken).toBe(false);
  });

  it('proves the agent\'s node with a projected token for audience conntrail, read from --token-file; the collector reviews it', () => {
    const spec = podSpec(agent);
    // Its only token: bound to the pod, for conntrail alone (the API server refuses it), rotated by the kubelet.
    const tokens = (spec.volumes ?? []).flatMap((v) => (v.projected?.sources ?? []).flatMap((s) => (s.serviceAccountToken ? [{ volume: v.name, ...s.serviceAccountToken }] : [])));
    expect(tokens).toEqual([{ volume: 'token', audience: 'conntrail', expirationSeconds: 3600, path: 'token' }]);
    // No shared-token Secret on the nodes: whoever holds it could speak for any node.
    expect((spec.volumes ?? []).filter((v) => v.secret !== undefined || v.projected?.sources.some((s) => s.secret !== undefined))).toEqual([]);
    const c = spec.containers[0] as Container;
    const mount = c.volumeMounts?.find((m) => m.name === 'token');
    expect(mount).toMatchObject({ readOnly: true });
    const args = c.args ?? [];
    expect(args[args.indexOf('--token-file') + 1]).toBe(`${mount?.mountPath}/token`);
    const collectorArgs = (podSpec(collector).containers[0] as Container).args ?? [];
    expect(collectorArgs[collectorArgs.indexOf('--agent-auth') + 1]).toBe('tokenreview');
  });

  it('runs the agent on every node in the host network, named by the downward API', () => {
    const spec = podSpec(agent);
    expect(spec.hostNetwork).toBe(true);
    expect(spec.tolerations).toContainEqual({ operator: 'Exists' });
    const c = spec.containers[0] as Container;
    expect(c.args?.slice(0, 3)).toEqual(['agent', '--collector', 'ws://conntrail-collector.conntrail.svc:7470']);
    expect(c.env?.find((e) => e.name === 'NODE_NAME')?.valueFrom?.fieldRef?.fieldPath).toBe('spec.nodeName');
  });

  it('runs no container privileged; the agent adds only NET_ADMIN and NET_RAW, the collector nothing', () => {
    for (const w of workloads)
      for (const c of podSpec(w).containers) {
        const sc = c.securityContext ?? {};
        expect(sc.privileged ?? false, c.name).toBe(false);
        expect(sc.allowPrivilegeEscalation, c.name).toBe(false);
        expect(sc.readOnlyRootFilesystem, c.name).toBe(true);
        expect((sc.capabilities as { drop?: string[] } | undefined)?.drop, c.name).toEqual(['ALL']);
      }
    expect(((podSpec(agent).containers[0]?.securityContext ?? {}).capabilities as { add?: string[] }).add?.sort()).toEqual(['NET_ADMIN', 'NET_RAW']);
    expect(((podSpec(collector).containers[0]?.securityContext ?? {}).capabilities as { add?: string[] }).add).toBeUndefined();
    expect(podSpec(collector).securityContext).toMatchObject({ runAsNonRoot: true });
  });

  it('sizes every container with requests and limits and gives it both probes', () => {
    for (const w of workloads)
      for (const c of podSpec(w).containers) {
        expect(Object.keys(c.resources?.requests ?? {}).sort(), c.name).toEqual(['cpu', 'memory']);
        expect(Object.keys(c.resources?.limits ?? {}).sort(), c.name).toEqual(['cpu', 'memory']);
        expect(c.livenessProbe, c.name).toBeDefined();
        expect(c.readinessProbe, c.name).toBeDefined();
      }
  });

  it('uses one image for both roles, with the tag set in one place', () => {
    const images = workloads.flatMap((w) => podSpec(w).containers.map((c) => c.image));
    expect(new Set(images)).toEqual(new Set(['ghcr.io/conntrail/conntrail:0.1.0']));
  });

  describe("the collector's store", () => {
    type StoreVolume = { name: string; persistentVolumeClaim?: { claimName: string }; emptyDir?: { sizeLimit?: string } };
    const storeOf = (objs: Obj[]) => {
      const deployment = objs.find((o) => o.kind === 'Deployment' && o.metadata.name === 'conntrail-collector');
      if (deployment === undefined) throw new Error('no collector Deployment');
      const spec = (deployment.spec as { strategy?: { type: string }; template: { spec: { volumes?: StoreVolume[]; containers: Container[] } } });
      const c = spec.template.spec.containers[0] as Container & { volumeMounts?: { name: string; mountPath: string }[] };
      const args = c.args ?? [];
      const dir = args[args.indexOf('--data-dir') + 1];
      const mount = c.volumeMounts?.find((m) => m.mountPath === dir);
      return { strategy: spec.strategy?.type, dir, volume: spec.template.spec.volumes?.find((v) => v.name === mount?.name), claims: objs.filter((o) => o.kind === 'PersistentVolumeClaim') };
    };

    it('is on a PersistentVolumeClaim mounted at --data-dir, one writer at a time (Recreate, ReadWriteOnce)', () => {
      const s = storeOf(objects);
      expect(s.dir).toBe('/var/lib/conntrail-data');
      expect(s.strategy).toBe('Recreate');
      expect(s.volume?.persistentVolumeClaim?.claimName).toBe('conntrail-collector-data');
      expect(s.claims.map((c) => [c.metadata.name, (c.spec as { accessModes: string[] }).accessModes])).toEqual([['conntrail-collector-data', ['ReadWriteOnce']]]);
    });

    it("is on an emptyDir, with no claim left, when kustomization.yaml's documented patch is uncommented", () => {
      const dir = mkdtempSync(join(tmpdir(), 'conntrail-manifests-'));
      try {
        cpSync(`${root}manifests`, dir, { recursive: true });
        const k = join(dir, 'kustomization.yaml');
        const text = readFileSync(k, 'utf8');
        const uncommented = text.replace('# patchesStrategicMerge:', 'patchesStrategicMerge:').replace('#   - store-on-emptydir.yaml', '  - store-on-emptydir.yaml');
        expect(uncommented).not.toBe(text);
        writeFileSync(k, uncommented);
        const rendered = parseAllDocuments(execFileSync('kubectl', ['kustomize', dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })).map((d) => d.toJS() as Obj);
        const s = storeOf(rendered);
        expect(s.dir).toBe('/var/lib/conntrail-data');
        expect(s.volume).toEqual({ name: 'data', emptyDir: { sizeLimit: '4Gi' } });
        expect(s.claims).toEqual([]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});

// The optional monitoring kustomization: Prometheus Operator objects are CRDs
// that kubernetes-models does not know, so their structure is checked here;
// the rules themselves are checked and unit-tested by promtool in
// test/integration/prometheus.test.ts.
describe('manifests/monitoring/', () => {
  const monitoring = parseAllDocuments(execFileSync('kubectl', ['kustomize', `${root}manifests/monitoring`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })).map((d) => d.toJS() as Obj);
  const mon = (kind: string, name: string) => {
    const o = monitoring.find((x) => x.kind === kind && x.metadata.name === name);
    if (o === undefined) throw new Error(`no ${kind} ${name} in manifests/monitoring`);
    return o;
  };
  const histogram = (name: string) => [name, `${name}_bucket`, `${name}_count`, `${name}_sum`];
  const exported = new Set(
    [new CollectorMetrics({ collector: new Collector({ log: pino({ level: 'silent' }) }), processMetrics: false }).registry, new AgentMetrics({ statuses: () => [], skippedTicks: () => 0, connected: () => false, processMetrics: false }).registry]
      .flatMap((r) => r.getMetricsAsArray())
      .flatMap((m) => histogram(m.name)),
  );
  const namedIn = (expr: string) => [...expr.matchAll(/\bconntrail_[a-z_]+/g)].map((m) => m[0]);
  type PodMonitor = { spec: { selector: { matchLabels: Record<string, string> }; podMetricsEndpoints: { port: string; path: string; authorization?: { type: string; credentials: { name: string; key: string } } }[] } };
  type Rule = { alert: string; expr: string; for?: string; labels: Record<string, string>; annotations: Record<string, string> };

  it('holds only the monitoring objects, in conntrail, and manifests/ does not include them', () => {
    expect(monitoring.map((o) => `${o.apiVersion} ${o.kind}/${o.metadata.name} ${o.metadata.namespace}`).sort()).toEqual([
      'monitoring.coreos.com/v1 PodMonitor/conntrail-agent conntrail',
      'monitoring.coreos.com/v1 PodMonitor/conntrail-collector conntrail',
      'monitoring.coreos.com/v1 PrometheusRule/conntrail conntrail',
      'v1 ConfigMap/conntrail-dashboard conntrail',
    ]);
    expect(objects.filter((o) => o.apiVersion.startsWith('monitoring.coreos.com') || o.kind === 'ConfigMap')).toEqual([]);
  });

  it.each([
    ['conntrail-collector', collector],
    ['conntrail-agent', agent],
  ])('PodMonitor %s selects its pods and scrapes /metrics on a port they name', (name, workload) => {
    const pm = mon('PodMonitor', name) as Obj & PodMonitor;
    const template = (workload.spec as { template: { metadata: { labels: Record<string, string> } } }).template.metadata.labels;
    expect(Object.keys(pm.spec.selector.matchLabels).length).toBeGreaterThan(0);
    for (const [k, v] of Object.entries(pm.spec.selector.matchLabels)) expect(template[k], k).toBe(v);
    const ports = podSpec(workload).containers.flatMap((c) => (c as Container & { ports?: { name: string }[] }).ports ?? []).map((p) => p.name);
    for (const e of pm.spec.podMetricsEndpoints) {
      expect(ports).toContain(e.port);
      expect(e.path).toBe('/metrics');
    }
  });

  it("scrapes the collector with the token of the Secret it reads, the agents with none", () => {
    const [endpoint] = (mon('PodMonitor', 'conntrail-collector') as Obj & PodMonitor).spec.podMetricsEndpoints;
    const secret = (podSpec(collector).volumes ?? []).find((v) => v.secret !== undefined)?.secret?.secretName;
    expect(endpoint?.authorization).toEqual({ type: 'Bearer', credentials: { name: secret, key: 'token' } });
    expect((mon('PodMonitor', 'conntrail-agent') as Obj & PodMonitor).spec.podMetricsEndpoints.every((e) => e.authorization === undefined)).toBe(true);
  });

  it('carries the rule groups of alerts.yaml (what promtool tests), each alert with a severity, a summary and metrics the collector exports', () => {
    const rule = mon('PrometheusRule', 'conntrail') as Obj & { spec: { groups: { name: string; rules: Rule[] }[] } };
    expect(rule.spec).toEqual(parseYaml(readFileSync(`${root}manifests/monitoring/alerts.yaml`, 'utf8')));
    const rules = rule.spec.groups.flatMap((g) => g.rules);
    expect(rules.map((r) => r.alert)).toEqual(['ConntrailErrorFinding', 'ConntrailNodeNotReporting', 'ConntrailSourceFailing']);
    for (const r of rules) {
      expect(['critical', 'warning'], r.alert).toContain(r.labels.severity);
      expect(Object.keys(r.annotations).sort(), r.alert).toEqual(['description', 'summary']);
      expect(namedIn(r.expr).length, r.alert).toBeGreaterThan(0);
      for (const m of namedIn(r.expr)) expect(exported, `${r.alert}: ${m}`).toContain(m);
    }
  });

  it('ships the Grafana dashboard in a ConfigMap for the dashboard sidecar, querying only exported metrics', async () => {
    const cm = mon('ConfigMap', 'conntrail-dashboard') as Obj & { data: Record<string, string> };
    const Model = await modelOf(cm);
    expect(() => new Model(cm).validate()).not.toThrow();
    expect(cm.metadata.labels?.grafana_dashboard).toBe('1');
    expect(Object.keys(cm.data)).toEqual(['conntrail.json']);
    const dashboard = JSON.parse(cm.data['conntrail.json'] ?? '') as { uid: string; panels: { title: string; targets: { expr: string }[] }[] };
    expect(dashboard).toEqual(JSON.parse(readFileSync(`${root}manifests/monitoring/dashboard.json`, 'utf8')));
    const titles = dashboard.panels.map((p) => p.title);
    expect(titles).toEqual(expect.arrayContaining(['Findings by kind', 'Findings by Service', 'Sample lag per node']));
    for (const p of dashboard.panels)
      for (const t of p.targets) {
        expect(namedIn(t.expr).length, p.title).toBeGreaterThan(0);
        for (const m of namedIn(t.expr)) expect(exported, `${p.title}: ${m}`).toContain(m);
      }
  });
});
