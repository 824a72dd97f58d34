// The collector's link to the Kubernetes API: a catalog kept current by the
// watcher and trimmed to the history window, or, without API access, none,
// said once so nobody wonders why findings name no pods.
import type { Logger } from 'pino';
import { KubeCatalog } from './catalog.ts';
import { startKubeWatch, type KubeWatch } from './watcher.ts';

export interface ClusterView {
  readonly catalog: KubeCatalog | null;
  stop(): Promise<void>;
}

export async function startClusterView(opts: { log: Logger; kubeconfig?: string; disabled?: boolean; historyMs: number; now?: () => number; env?: NodeJS.ProcessEnv }): Promise<ClusterView> {
  const now = opts.now ?? Date.now;
  if (opts.disabled) {
    opts.log.info({ kubernetes: 'off' }, 'Kubernetes API not used (--no-kubernetes): findings name endpoints by address, from node data alone');
    return { catalog: null, stop: async () => undefined };
  }
  const catalog = new KubeCatalog();
  let watch: KubeWatch | null;
  try {
    watch = await startKubeWatch({ catalog, log: opts.log, now, ...(opts.env === undefined ? {} : { env: opts.env }), ...(opts.kubeconfig === undefined ? {} : { kubeconfig: opts.kubeconfig }) });
  } catch (err) {
    opts.log.warn({ kubernetes: 'unusable', reason: (err as Error).message }, 'Kubernetes API config could not be loaded: running on node data alone');
    return { catalog: null, stop: async () => undefined };
  }
  if (watch === null) {
    opts.log.info({ kubernetes: 'none' }, 'no Kubernetes API config (not in a cluster, no KUBECONFIG, no ~/.kube/config): running on node data alone; findings name endpoints by address');
    return { catalog: null, stop: async () => undefined };
  }
  opts.log.info({ kubernetes: watch.source }, 'Kubernetes API: watching Services and EndpointSlices');
  const prune = setInterval(() => catalog.prune(now() - opts.historyMs), 60_000);
  prune.unref();
  return {
    catalog,
    async stop() {
      clearInterval(prune);
      await watch.stop();
    },
  };
}
