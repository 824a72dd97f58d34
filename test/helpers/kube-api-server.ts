// A small Kubernetes API server, in process, that speaks the list and watch
// protocol the way kube-apiserver does for Services and EndpointSlices:
// a list answers with the collection's resourceVersion; a watch from that
// resourceVersion streams ADDED / MODIFIED / DELETED events as JSON lines,
// BOOKMARKs when asked for (allowWatchBookmarks), and, when the
// resourceVersion is older than the retained history, one ERROR event with a
// 410 Expired Status before closing, after which clients must relist.
// HTTPS with a throwaway certificate whose CA the kubeconfig carries as
// certificate-authority-data; bearer token required; 401 and 403 as Status objects.
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeCertificates } from './certs.ts';
import type { AddressInfo } from 'node:net';

export type Resource = 'services' | 'endpointslices';

interface StoredEvent {
  readonly rv: number;
  readonly type: 'ADDED' | 'MODIFIED' | 'DELETED';
  readonly object: Record<string, unknown>;
}

interface OpenWatch {
  readonly resource: Resource;
  readonly bookmarks: boolean;
  readonly res: ServerResponse;
}

const KINDS: Record<Resource, { kind: string; apiVersion: string; listKind: string; path: RegExp }> = {
  services: { kind: 'Service', apiVersion: 'v1', listKind: 'ServiceList', path: /^\/api\/v1\/services$/ },
  endpointslices: { kind: 'EndpointSlice', apiVersion: 'discovery.k8s.io/v1', listKind: 'EndpointSliceList', path: /^\/apis\/discovery\.k8s\.io\/v1\/endpointslices$/ },
};

export interface RequestSeen {
  readonly method: string;
  readonly path: string;
  readonly query: Record<string, string>;
  readonly status: number;
}

export class KubeApiServer {
  readonly token: string;
  /** Resources this server answers 403 for, as RBAC would. */
  readonly forbidden = new Set<Resource>();
  readonly requests: RequestSeen[] = [];
  #rv = 1000;
  /** Events older than this were compacted away: a watch from before it gets 410. */
  #oldestRetained = 0;
  readonly #objects: Record<Resource, Map<string, Record<string, unknown>>> = { services: new Map(), endpointslices: new Map() };
  readonly #history: Record<Resource, StoredEvent[]> = { services: [], endpointslices: [] };
  readonly #watches = new Set<OpenWatch>();
  readonly #server: Server;
  #port = 0;
  readonly #ca: string;

  constructor(token = 'kube-test-token') {
    this.token = token;
    const { ca, cert, key } = makeCertificates();
    this.#ca = ca;
    this.#server = createServer({ cert, key }, (req, res) => this.#handle(req, res));
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.#port = (this.#server.address() as AddressInfo).port;
    return this.#port;
  }

  get url(): string {
    return `https://127.0.0.1:${this.#port}`;
  }

  /** Writes a kubeconfig for this server into `dir` and returns its path. */
  writeKubeconfig(dir: string, token = this.token): string {
    const path = join(dir, 'kubeconfig');
    writeFileSync(
      path,
      [
        'apiVersion: v1',
        'kind: Config',
        'clusters:',
        '- name: lab',
        '  cluster:',
        `    server: ${this.url}`,
        `    certificate-authority-data: ${Buffer.from(this.#ca).toString('base64')}`,
        'users:',
        '- name: conntrail',
        '  user:',
        `    token: ${token}`,
        'contexts:',
        '- name: lab',
        '  context:',
        '    cluster: lab',
        '    user: conntrail',
        'current-context: lab',
        '',
      ].join('\n'),
    );
    return path;
  }

  get resourceVersion(): number {
    return this.#rv;
  }

  /** Creates or replaces an object (ADDED or MODIFIED), stamping resourceVersion and uid. */
  apply(resource: Resource, object: Record<string, unknown>): Record<string, unknown> {
    const meta = { ...(object.metadata as Record<string, unknown>) };
    const key = `${String(meta.namespace)}/${String(meta.name)}`;
    const existing = this.#objects[resource].get(key);
    meta.resourceVersion = String(++this.#rv);
    meta.uid ??= (existing?.metadata as Record<string, unknown> | undefined)?.uid ?? `uid-${this.#rv}`;
    const stored = { ...object, metadata: meta };
    this.#objects[resource].set(key, stored);
    this.#emit(resource, { rv: this.#rv, type: existing === undefined ? 'ADDED' : 'MODIFIED', object: stored });
    return stored;
  }

  delete(resource: Resource, namespace: string, name: string): void {
    const key = `${namespace}/${name}`;
    const existing = this.#objects[resource].get(key);
    if (existing === undefined) throw new Error(`no ${resource} ${key}`);
    this.#objects[resource].delete(key);
    const meta = { ...(existing.metadata as Record<string, unknown>), resourceVersion: String(++this.#rv) };
    this.#emit(resource, { rv: this.#rv, type: 'DELETED', object: { ...existing, metadata: meta } });
  }

  /** Sends a BOOKMARK at the current resourceVersion to every watch that asked for bookmarks. */
  bookmark(): number {
    let sent = 0;
    for (const w of this.#watches) {
      if (!w.bookmarks) continue;
      const { kind, apiVersion } = KINDS[w.resource];
      w.res.write(`${JSON.stringify({ type: 'BOOKMARK', object: { kind, apiVersion, metadata: { resourceVersion: String(this.#rv) } } })}\n`);
      sent++;
    }
    return sent;
  }

  /** Forgets the event history, as etcd compaction does: resuming a watch from an older resourceVersion now gets 410 Gone. */
  compact(): void {
    this.#oldestRetained = this.#rv;
    this.#history.services.length = 0;
    this.#history.endpointslices.length = 0;
  }

  /** Ends every open watch, as an API server restart or a load balancer in front of it would. */
  dropWatches(): void {
    for (const w of this.#watches) w.res.end();
    this.#watches.clear();
  }

  get openWatches(): number {
    return this.#watches.size;
  }

  async close(): Promise<void> {
    this.dropWatches();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #emit(resource: Resource, event: StoredEvent): void {
    this.#history[resource].push(event);
    for (const w of this.#watches) if (w.resource === resource) this.#send(w.res, resource, event);
  }

  #send(res: ServerResponse, resource: Resource, event: StoredEvent): void {
    const { kind, apiVersion } = KINDS[resource];
    res.write(`${JSON.stringify({ type: event.type, object: { kind, apiVersion, ...event.object } })}\n`);
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const query = Object.fromEntries(url.searchParams);
    const seen = (status: number) => this.requests.push({ method: req.method ?? 'GET', path: url.pathname, query, status });
    if (req.headers.authorization !== `Bearer ${this.token}`) {
      seen(401);
      return status(res, 401, 'Unauthorized', 'Unauthorized');
    }
    const resource = (Object.keys(KINDS) as Resource[]).find((r) => KINDS[r].path.test(url.pathname));
    if (resource === undefined || req.method !== 'GET') {
      seen(404);
      return status(res, 404, 'NotFound', `the server could not find the requested resource (${req.method} ${url.pathname})`);
    }
    if (this.forbidden.has(resource)) {
      seen(403);
      return status(res, 403, 'Forbidden', `${resource} is forbidden: User "system:serviceaccount:conntrail:conntrail-collector" cannot list resource "${resource}" at the cluster scope`);
    }
    seen(200);
    if (query.watch === 'true' || query.watch === '1') return this.#watch(resource, query, res);
    const { listKind, apiVersion } = KINDS[resource];
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: listKind, apiVersion, metadata: { resourceVersion: String(this.#rv) }, items: [...this.#objects[resource].values()] }));
  }

  #watch(resource: Resource, query: Record<string, string>, res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    const from = query.resourceVersion === undefined || query.resourceVersion === '' || query.resourceVersion === '0' ? null : Number(query.resourceVersion);
    if (from !== null && (!Number.isInteger(from) || from < this.#oldestRetained)) {
      // kube-apiserver answers an expired resourceVersion on a watch with 200 and one ERROR event.
      res.end(
        `${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `too old resource version: ${query.resourceVersion} (${this.#oldestRetained})`, reason: 'Expired', code: 410 } })}\n`,
      );
      return;
    }
    if (from === null) for (const object of this.#objects[resource].values()) this.#send(res, resource, { rv: this.#rv, type: 'ADDED', object });
    else for (const e of this.#history[resource]) if (e.rv > from) this.#send(res, resource, e);
    const watch: OpenWatch = { resource, bookmarks: query.allowWatchBookmarks === 'true', res };
    this.#watches.add(watch);
    res.on('close', () => this.#watches.delete(watch));
  }
}

function status(res: ServerResponse, code: number, reason: string, message: string): void {
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code }));
}

