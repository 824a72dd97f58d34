// Keeps a KubeCatalog current from the Kubernetes API: one informer (list,
// then watch from its resourceVersion, relist on 410 Gone) for Services and
// one for EndpointSlices, cluster-wide, through @kubernetes/client-node.
// The client library is loaded only here, and only when there is an API to
// talk to, so the agent and API-less collectors never pay for it.
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { KubeCatalog, KubeEvent } from './catalog.ts';
import { decodeEndpointSlice, decodeService } from './objects.ts';

export interface KubeWatchOptions {
  readonly catalog: KubeCatalog;
  readonly log: Logger;
  /** A kubeconfig file; without it: in-cluster config, then $KUBECONFIG, then ~/.kube/config. */
  readonly kubeconfig?: string;
  readonly now?: () => number;
  /** Longest wait between retries after the API fails (ms). */
  readonly maxBackoffMs?: number;
  /** Where to look for in-cluster variables and KUBECONFIG (default: this process's). */
  readonly env?: NodeJS.ProcessEnv;
}

export interface KubeWatch {
  /** Where the config came from: `in-cluster` or a file path. */
  readonly source: string;
  /** Resolves once both resources have been listed (or rejects never; it keeps retrying). */
  readonly synced: Promise<void>;
  stop(): Promise<void>;
}

/** Where a config would come from, without loading the client library; null when there is none. */
export function findKubeConfig(explicit: string | undefined, env: NodeJS.ProcessEnv = process.env): string | null {
  if (explicit !== undefined) return explicit;
  if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT && existsSync('/var/run/secrets/kubernetes.io/serviceaccount/token')) return 'in-cluster';
  const fromEnv = env.KUBECONFIG?.split(':').find((p) => p !== '' && existsSync(p));
  if (fromEnv !== undefined) return fromEnv;
  const home = join(env.HOME ?? homedir(), '.kube', 'config');
  return existsSync(home) ? home : null;
}

interface Resource {
  readonly label: string;
  readonly path: string;
  readonly toEvent: (kind: 'upsert' | 'delete', obj: unknown, time: number) => KubeEvent | { error: string };
}

const RESOURCES: readonly Resource[] = [
  {
    label: 'services',
    path: '/api/v1/services',
    toEvent: (kind, obj, time) => {
      const d = decodeService(obj);
      if (!d.ok) return { error: d.error };
      return kind === 'upsert' ? { time, kind: 'service', service: d.value } : { time, kind: 'service-deleted', namespace: d.value.namespace, name: d.value.name };
    },
  },
  {
    label: 'endpointslices',
    path: '/apis/discovery.k8s.io/v1/endpointslices',
    toEvent: (kind, obj, time) => {
      const d = decodeEndpointSlice(obj);
      if (!d.ok) return { error: d.error };
      return kind === 'upsert' ? { time, kind: 'slice', slice: d.value } : { time, kind: 'slice-deleted', namespace: d.value.namespace, name: d.value.name };
    },
  },
];

/** Starts watching; null when no config is found (the caller says so once). */
export async function startKubeWatch(opts: KubeWatchOptions): Promise<KubeWatch | null> {
  const source = findKubeConfig(opts.kubeconfig, opts.env);
  if (source === null) return null;
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  if (source === 'in-cluster') config.loadFromCluster();
  else config.loadFromFile(source);
  const core = config.makeApiClient(k8s.CoreV1Api);
  const discovery = config.makeApiClient(k8s.DiscoveryV1Api);
  const now = opts.now ?? Date.now;
  const maxBackoff = opts.maxBackoffMs ?? 30_000;
  const log = opts.log.child({ kubernetes: source === 'in-cluster' ? 'in-cluster' : config.getCurrentCluster()?.server ?? source });

  // The library's ListWatch does not ask for bookmarks; with them a quiet
  // watch keeps a fresh resourceVersion and resumes instead of relisting.
  class BookmarkingWatch extends k8s.Watch {
    override watch(path: string, query: Record<string, string | number | boolean | undefined>, callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void, done: (err: unknown) => void): Promise<AbortController> {
      return super.watch(path, { ...query, allowWatchBookmarks: true }, callback, done);
    }
  }

  const informers: { stop(): Promise<void> }[] = [];
  const timers = new Set<NodeJS.Timeout>();
  let stopped = false;
  const syncs: Promise<void>[] = [];
  for (const resource of RESOURCES) {
    let failing: string | null = null;
    let backoff = 1_000;
    let markSynced: () => void = () => undefined;
    syncs.push(new Promise<void>((resolve) => (markSynced = resolve)));
    // Called after each (re)list has been applied: ListWatch applies the
    // items in the same turn the list resolves, before this runs.
    const listed = () => {
      if (failing !== null) log.info({ resource: resource.label }, 'Kubernetes API: listing and watching again');
      failing = null;
      backoff = 1_000;
      markSynced();
    };
    const fetchList = resource.label === 'services' ? () => core.listServiceForAllNamespaces() : () => discovery.listEndpointSliceForAllNamespaces();
    const list = async () => {
      const result = await fetchList();
      setImmediate(listed);
      return result;
    };
    const informer = new k8s.ListWatch<{ metadata?: { name?: string; namespace?: string; resourceVersion?: string } }>(resource.path, new BookmarkingWatch(config), list, false);
    informers.push(informer);
    const onObject = (kind: 'upsert' | 'delete') => (obj: unknown) => {
      const event = resource.toEvent(kind, obj, now());
      if ('error' in event) log.warn({ resource: resource.label, reason: event.error }, 'Kubernetes API: skipped an object it could not read');
      else opts.catalog.apply(event);
    };
    informer.on('add', onObject('upsert'));
    informer.on('update', onObject('upsert'));
    informer.on('delete', onObject('delete'));
    // ListWatch stops after an error other than 410 Gone: start it again, backing off.
    informer.on('error', (err: unknown) => {
      if (stopped) return;
      const reason = describeError(err);
      if (failing !== reason) log.warn({ resource: resource.label, reason, retryInMs: backoff }, 'Kubernetes API: cannot list/watch; findings use node data alone for this until it works');
      failing = reason;
      const timer = setTimeout(() => {
        timers.delete(timer);
        if (!stopped) void informer.start();
      }, backoff);
      timers.add(timer);
      backoff = Math.min(backoff * 2, maxBackoff);
    });
    void informer.start();
  }
  const synced = Promise.all(syncs).then(() => {
    log.info({ resources: RESOURCES.map((r) => r.label) }, 'Kubernetes API: Services and EndpointSlices listed; watching');
  });
  return {
    source,
    synced,
    async stop() {
      stopped = true;
      for (const t of timers) clearTimeout(t);
      await Promise.all(informers.map((i) => i.stop()));
    },
  };
}

function describeError(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as Error & { code?: number | string; statusCode?: number }).statusCode ?? (err as Error & { code?: number | string }).code;
    const body = (err as Error & { body?: unknown }).body;
    const message = typeof body === 'string' && body.length < 300 ? body : err.message.split('\n')[0];
    return code === undefined ? (message ?? String(err)) : `${code}: ${message}`;
  }
  return String(err);
}
