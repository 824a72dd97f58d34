// A small Kubernetes API server, in process, that speaks the list and watch
// protocol the way kube-apiserver does for Services and EndpointSlices:
// a list answers with the collection's resourceVersion; a watch from that
// resourceVersion streams ADDED / MODIFIED / DELETED events as JSON lines,
// BOOKMARKs when asked for (allowWatchBookmarks), and, when the
// resourceVersion is older than the retained history, one ERROR event with a
// 410 Expired Status before closing, after which clients must relist.
// HTTPS with a throwaway certificate whose CA the kubeconfig carries as
// certificate-authority-data; bearer token required; 401 and 403 as Status objects.
//
// It also issues and reviews ServiceAccount tokens the way the API server's
// TokenRequest and TokenReview do for a projected serviceAccountToken volume:
// a JWT-shaped token bound to a pod (and, as kube-apiserver >= 1.30 does with
// ServiceAccountTokenPodNodeInfo, to the pod's node), reviewed by POST
// /apis/authentication.k8s.io/v1/tokenreviews (201 with the TokenReview and
// its status: the user, its extra keys, the audiences both sides share), and
// pods read by GET /api/v1/namespaces/NS/pods/NAME. Only tokens this server
// issued authenticate (the registry stands in for the signature); an expired
// one, one for other audiences, or one whose pod is gone does not, with an
// error worded like kube-apiserver's.
//
// And Events (events.k8s.io/v1) as kube-apiserver stores them: POST
// /apis/events.k8s.io/v1/namespaces/NS/events validated as
// pkg/apis/core/validation/events.go does for that API (eventTime, action,
// reason, reportingController and reportingInstance required, type Normal or
// Warning, note at most 1024 bytes, series.count at least 2, the namespace
// the regarding object's, a DNS-subdomain name; 422 Invalid otherwise, 409
// AlreadyExists for a taken name), PATCH …/events/NAME with a strategic or
// JSON merge patch (the same thing for an Event's scalar and struct fields;
// immutable fields refused as on update), GET of one, of a namespace's and of
// all. `forbidden.add('events')` answers their create and patch with 403, as
// a ClusterRole without those verbs does. Services are also read one at a
// time (GET /api/v1/namespaces/NS/services/NAME).
//
// For `kubectl describe service|pod` against it: /version, the legacy
// discovery documents (/api, /api/v1, /apis, /apis/GROUP/VERSION) for what it
// serves, and the core v1 view of the stored Events (GET
// /api/v1/namespaces/NS/events with a fieldSelector on involvedObject.*, type
// and reason), converted from events.k8s.io/v1 as kube-apiserver's
// pkg/apis/events/v1 conversion does: regarding -> involvedObject, note ->
// message, reportingController -> reportingComponent, deprecated* -> count,
// firstTimestamp, lastTimestamp and source.
import { randomBytes, randomUUID } from 'node:crypto';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createServer } from 'node:https';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeCertificates } from './certs.ts';
import type { AddressInfo } from 'node:net';

export type Resource = 'services' | 'endpointslices' | 'pods';

/** What the API server recorded when it issued a token (TokenRequest), standing in for the signed claims. */
export interface IssuedToken {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly pod: { readonly name: string; readonly uid: string } | null;
  /** Embedded only when the server has podNodeInfo on and the pod is scheduled. */
  readonly node: { readonly name: string; readonly uid: string } | null;
  readonly audiences: readonly string[];
  readonly expiresAt: number;
  readonly jti: string;
}

/** kube-apiserver's own audience, what a token is for when no audience is asked for. */
export const API_AUDIENCE = 'https://kubernetes.default.svc.cluster.local';

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
  pods: { kind: 'Pod', apiVersion: 'v1', listKind: 'PodList', path: /^\/api\/v1\/pods$/ },
};

const TOKEN_REVIEWS = /^\/apis\/authentication\.k8s\.io\/v1\/tokenreviews$/;
const ONE_POD = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)$/;
const ONE_SERVICE = /^\/api\/v1\/namespaces\/([^/]+)\/services\/([^/]+)$/;
const NS_EVENTS = /^\/apis\/events\.k8s\.io\/v1\/namespaces\/([^/]+)\/events$/;
const ONE_EVENT = /^\/apis\/events\.k8s\.io\/v1\/namespaces\/([^/]+)\/events\/([^/]+)$/;
const ALL_EVENTS = /^\/apis\/events\.k8s\.io\/v1\/events$/;
const CORE_NS_EVENTS = /^\/api\/v1\/namespaces\/([^/]+)\/events$/;
const NS_ENDPOINTSLICES = /^\/apis\/discovery\.k8s\.io\/v1\/namespaces\/([^/]+)\/endpointslices$/;

/** What discovery lists, by group version: only what this server answers. */
const DISCOVERY: Record<string, readonly { name: string; singularName: string; namespaced: boolean; kind: string; verbs: readonly string[]; shortNames?: readonly string[] }[]> = {
  v1: [
    { name: 'events', singularName: 'event', namespaced: true, kind: 'Event', verbs: ['list'], shortNames: ['ev'] },
    { name: 'pods', singularName: 'pod', namespaced: true, kind: 'Pod', verbs: ['get', 'list', 'watch'], shortNames: ['po'] },
    { name: 'services', singularName: 'service', namespaced: true, kind: 'Service', verbs: ['get', 'list', 'watch'], shortNames: ['svc'] },
  ],
  'authentication.k8s.io/v1': [{ name: 'tokenreviews', singularName: 'tokenreview', namespaced: false, kind: 'TokenReview', verbs: ['create'] }],
  'discovery.k8s.io/v1': [{ name: 'endpointslices', singularName: 'endpointslice', namespaced: true, kind: 'EndpointSlice', verbs: ['list', 'watch'] }],
  'events.k8s.io/v1': [{ name: 'events', singularName: 'event', namespaced: true, kind: 'Event', verbs: ['create', 'get', 'list', 'patch'], shortNames: ['ev'] }],
};
/** The core v1 Event fields a fieldSelector may name here (kube-apiserver's pkg/registry/core/event.ToSelectableFields, the ones kubectl uses). */
const EVENT_FIELDS: Record<string, (e: Record<string, unknown>) => unknown> = {
  'involvedObject.kind': (e) => (e.involvedObject as Record<string, unknown> | undefined)?.kind,
  'involvedObject.namespace': (e) => (e.involvedObject as Record<string, unknown> | undefined)?.namespace,
  'involvedObject.name': (e) => (e.involvedObject as Record<string, unknown> | undefined)?.name,
  'involvedObject.uid': (e) => (e.involvedObject as Record<string, unknown> | undefined)?.uid,
  'involvedObject.apiVersion': (e) => (e.involvedObject as Record<string, unknown> | undefined)?.apiVersion,
  type: (e) => e.type,
  reason: (e) => e.reason,
};
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
// apimachinery IsQualifiedName: an optional DNS-subdomain prefix and '/', then a name of at most 63.
const QUALIFIED_NAME = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/;
/** The fields ValidateEventUpdate keeps immutable, by their events.k8s.io/v1 names. */
const EVENT_IMMUTABLE = ['regarding', 'reason', 'note', 'type', 'eventTime', 'action', 'related', 'reportingController', 'reportingInstance', 'deprecatedSource', 'deprecatedFirstTimestamp', 'deprecatedLastTimestamp', 'deprecatedCount'] as const;

export interface RequestSeen {
  readonly method: string;
  readonly path: string;
  readonly query: Record<string, string>;
  readonly status: number;
}

export class KubeApiServer {
  readonly token: string;
  /** Resources this server answers 403 for, as RBAC would. */
  readonly forbidden = new Set<Resource | 'tokenreviews' | 'events'>();
  /** Issued tokens carry the pod's node (kube-apiserver >= 1.30); false acts as an older server, whose reviews name only the pod. */
  podNodeInfo = true;
  /** How long a TokenReview waits before it is answered, as a loaded API server would. */
  tokenReviewDelayMs = 0;
  readonly #issued = new Map<string, IssuedToken>();
  /** Events by `namespace/name`, as stored (metadata stamped). */
  readonly #events = new Map<string, Record<string, unknown>>();
  readonly requests: RequestSeen[] = [];
  #rv = 1000;
  /** Events older than this were compacted away: a watch from before it gets 410. */
  #oldestRetained = 0;
  readonly #objects: Record<Resource, Map<string, Record<string, unknown>>> = { services: new Map(), endpointslices: new Map(), pods: new Map() };
  readonly #history: Record<Resource, StoredEvent[]> = { services: [], endpointslices: [], pods: [] };
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
    this.#history.pods.length = 0;
  }

  /** Creates a running pod of `serviceAccount` on `nodeName`, as the scheduler and kubelet would leave it. */
  addPod(namespace: string, name: string, nodeName: string, serviceAccount: string): Record<string, unknown> {
    return this.apply('pods', { metadata: { namespace, name }, spec: { nodeName, serviceAccountName: serviceAccount, containers: [{ name: 'agent', image: 'conntrail' }] }, status: { phase: 'Running' } });
  }

  /**
   * A token for a pod's ServiceAccount, bound to the pod, as the kubelet
   * requests for a projected serviceAccountToken volume (TokenRequest with
   * boundObjectRef Pod). JWT-shaped, so its `exp` can be read like a real one.
   */
  issueToken(opts: { namespace: string; pod: string; audiences?: readonly string[]; expirationSeconds?: number; now?: number }): string {
    const pod = this.#objects.pods.get(`${opts.namespace}/${opts.pod}`);
    if (pod === undefined) throw new Error(`no pod ${opts.namespace}/${opts.pod}`);
    const meta = pod.metadata as { uid: string };
    const spec = pod.spec as { nodeName?: string; serviceAccountName: string };
    const now = opts.now ?? Date.now();
    const issued: IssuedToken = {
      namespace: opts.namespace,
      serviceAccount: spec.serviceAccountName,
      pod: { name: opts.pod, uid: meta.uid },
      node: this.podNodeInfo && spec.nodeName !== undefined ? { name: spec.nodeName, uid: `node-uid-${spec.nodeName}` } : null,
      audiences: opts.audiences ?? [API_AUDIENCE],
      expiresAt: now + (opts.expirationSeconds ?? 3600) * 1000,
      jti: randomUUID(),
    };
    const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const claims = {
      aud: issued.audiences,
      exp: Math.floor(issued.expiresAt / 1000),
      iat: Math.floor(now / 1000),
      iss: API_AUDIENCE,
      jti: issued.jti,
      'kubernetes.io': { namespace: issued.namespace, ...(issued.node ? { node: issued.node } : {}), pod: issued.pod, serviceaccount: { name: issued.serviceAccount, uid: `sa-uid-${issued.serviceAccount}` } },
      nbf: Math.floor(now / 1000),
      sub: `system:serviceaccount:${issued.namespace}:${issued.serviceAccount}`,
    };
    const token = `${b64({ alg: 'RS256', kid: 'lab' })}.${b64(claims)}.${randomBytes(32).toString('base64url')}`;
    this.#issued.set(token, issued);
    return token;
  }

  /** The TokenReview status kube-apiserver gives for `token` and the audiences asked for. */
  #reviewStatus(token: unknown, asked: readonly string[]): Record<string, unknown> {
    const invalid = (why: string) => ({ user: {}, error: `[invalid bearer token, ${why}]` });
    const issued = typeof token === 'string' ? this.#issued.get(token) : undefined;
    if (issued === undefined) return invalid('square/go-jose: error in cryptographic primitive');
    if (Date.now() >= issued.expiresAt) return invalid('service account token has expired');
    const targets = asked.length > 0 ? asked : [API_AUDIENCE];
    const shared = issued.audiences.filter((a) => targets.includes(a));
    if (shared.length === 0) return invalid(`token audiences ${JSON.stringify(issued.audiences)} is invalid for the target audiences ${JSON.stringify(targets)}`);
    if (issued.pod !== null) {
      const pod = this.#objects.pods.get(`${issued.namespace}/${issued.pod.name}`);
      if (pod === undefined) return invalid(`pod "${issued.pod.name}" not found`);
      if ((pod.metadata as { uid: string }).uid !== issued.pod.uid) return invalid(`pod "${issued.pod.name}" is not the pod the token was issued for`);
    }
    const extra: Record<string, string[]> = { 'authentication.kubernetes.io/credential-id': [`JTI=${issued.jti}`] };
    if (issued.node !== null) {
      extra['authentication.kubernetes.io/node-name'] = [issued.node.name];
      extra['authentication.kubernetes.io/node-uid'] = [issued.node.uid];
    }
    if (issued.pod !== null) {
      extra['authentication.kubernetes.io/pod-name'] = [issued.pod.name];
      extra['authentication.kubernetes.io/pod-uid'] = [issued.pod.uid];
    }
    return {
      authenticated: true,
      user: { username: `system:serviceaccount:${issued.namespace}:${issued.serviceAccount}`, uid: `sa-uid-${issued.serviceAccount}`, groups: ['system:serviceaccounts', `system:serviceaccounts:${issued.namespace}`, 'system:authenticated'], extra },
      audiences: shared,
    };
  }

  #tokenReview(req: IncomingMessage, res: ServerResponse, seen: (status: number) => void): void {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      let review: { apiVersion?: unknown; kind?: unknown; spec?: { token?: unknown; audiences?: unknown } };
      try {
        review = JSON.parse(body) as typeof review;
      } catch {
        seen(400);
        return status(res, 400, 'BadRequest', 'the request body is not JSON');
      }
      if (review.kind !== 'TokenReview' || review.apiVersion !== 'authentication.k8s.io/v1' || typeof review.spec?.token !== 'string' || review.spec.token === '') {
        seen(422);
        return status(res, 422, 'Invalid', 'TokenReview.authentication.k8s.io is invalid: spec.token: Required value');
      }
      const asked = Array.isArray(review.spec.audiences) ? review.spec.audiences.filter((a): a is string => typeof a === 'string') : [];
      const answer = () => {
        if (res.destroyed) return;
        seen(201);
        res.writeHead(201, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec: review.spec, status: this.#reviewStatus(review.spec?.token, asked) }));
      };
      if (this.tokenReviewDelayMs > 0) setTimeout(answer, this.tokenReviewDelayMs);
      else answer();
    });
  }

  /** The Events stored, as a GET would return them. */
  events(namespace?: string): Record<string, unknown>[] {
    return [...this.#events.values()].filter((e) => namespace === undefined || (e.metadata as { namespace: string }).namespace === namespace).map((e) => ({ kind: 'Event', apiVersion: 'events.k8s.io/v1', ...e }));
  }

  /** Forgets an Event, as its TTL (--event-ttl, 1 h by default) does: a PATCH of it is then 404. */
  expireEvent(namespace: string, name: string): boolean {
    return this.#events.delete(`${namespace}/${name}`);
  }

  #readBody(req: IncomingMessage): Promise<string> {
    return new Promise((resolve) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => resolve(body));
    });
  }

  /** What ValidateEventCreate / validateV1EventSeries say about an events.k8s.io/v1 Event, as field errors. */
  #eventErrors(e: Record<string, unknown>, namespace: string): string[] {
    const errors: string[] = [];
    const meta = (e.metadata ?? {}) as Record<string, unknown>;
    const name = typeof meta.name === 'string' ? meta.name : '';
    const str = (k: string): string => {
      const v = e[k];
      return typeof v === 'string' ? v : '';
    };
    if (name === '') errors.push('metadata.name: Required value: name or generateName is required');
    else if (name.length > 253 || !DNS1123_SUBDOMAIN.test(name)) errors.push(`metadata.name: Invalid value: "${name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'`);
    if (meta.namespace !== undefined && meta.namespace !== namespace) errors.push(`metadata.namespace: Invalid value: "${String(meta.namespace)}": does not match the namespace of the request`);
    if (str('eventTime') === '' || Number.isNaN(Date.parse(str('eventTime')))) errors.push('eventTime: Required value');
    if (e.type !== 'Normal' && e.type !== 'Warning') errors.push(`type: Invalid value: "": has invalid value: ${String(e.type ?? '')}`);
    const regarding = (e.regarding ?? {}) as Record<string, unknown>;
    if ((regarding.namespace ?? '') === '' ? namespace !== 'default' && namespace !== 'kube-system' : regarding.namespace !== namespace) errors.push(`regarding.namespace: Invalid value: "${String(regarding.namespace ?? '')}": does not match event.namespace`);
    const controller = str('reportingController');
    if (controller === '') errors.push('reportingController: Required value');
    else if (!QUALIFIED_NAME.test(controller) || controller.length > 316) errors.push(`reportingController: Invalid value: "${controller}": must be a qualified name`);
    if (str('reportingInstance') === '') errors.push('reportingInstance: Required value');
    if (str('reportingInstance').length > 128) errors.push('reportingInstance: Invalid value: "": can have at most 128 characters');
    if (str('action') === '') errors.push('action: Required value');
    if (str('action').length > 128) errors.push('action: Invalid value: "": can have at most 128 characters');
    if (str('reason') === '') errors.push('reason: Required value');
    if (str('reason').length > 128) errors.push('reason: Invalid value: "": can have at most 128 characters');
    // Go's len: bytes.
    if (Buffer.byteLength(str('note')) > 1024) errors.push('note: Invalid value: "": can have at most 1024 characters');
    errors.push(...seriesErrors(e.series));
    return errors;
  }

  #eventsRequest(req: IncomingMessage, res: ServerResponse, url: URL, seen: (status: number) => void): boolean {
    const ns = NS_EVENTS.exec(url.pathname);
    const one = ONE_EVENT.exec(url.pathname);
    if (ns === null && one === null && !ALL_EVENTS.test(url.pathname)) return false;
    const namespace = decodeURIComponent((ns ?? one)?.[1] ?? '');
    const name = decodeURIComponent(one?.[2] ?? '');
    const verb = req.method === 'POST' && ns !== null ? 'create' : req.method === 'PATCH' && one !== null ? 'patch' : req.method === 'GET' ? (one !== null ? 'get' : 'list') : null;
    if (verb === null) {
      seen(405);
      status(res, 405, 'MethodNotAllowed', `the server does not allow this method on the requested resource (${req.method} ${url.pathname})`);
      return true;
    }
    if ((verb === 'create' || verb === 'patch') && this.forbidden.has('events')) {
      seen(403);
      status(res, 403, 'Forbidden', `events.events.k8s.io${name === '' ? '' : ` "${name}"`} is forbidden: User "system:serviceaccount:conntrail:conntrail-collector" cannot ${verb} resource "events" in API group "events.k8s.io" in the namespace "${namespace}"`);
      return true;
    }
    const answer = (code: number, object: unknown) => {
      seen(code);
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(object));
    };
    const invalid = (eventName: string, errors: readonly string[]) => {
      seen(422);
      res.writeHead(422, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message: `Event.events.k8s.io "${eventName}" is invalid: [${errors.join(', ')}]`, reason: 'Invalid', details: { name: eventName, group: 'events.k8s.io', kind: 'Event', causes: errors.map((m) => ({ reason: 'FieldValueInvalid', message: m, field: m.split(':')[0] })) }, code: 422 }));
    };
    if (verb === 'list') {
      answer(200, { kind: 'EventList', apiVersion: 'events.k8s.io/v1', metadata: { resourceVersion: String(this.#rv) }, items: this.events(ns === null ? undefined : namespace).map(({ kind: _k, apiVersion: _a, ...e }) => e) });
      return true;
    }
    const stored = this.#events.get(`${namespace}/${name}`);
    if (verb === 'get' || verb === 'patch') {
      if (stored === undefined) {
        seen(404);
        status(res, 404, 'NotFound', `events.events.k8s.io "${name}" not found`);
        return true;
      }
      if (verb === 'get') {
        answer(200, { kind: 'Event', apiVersion: 'events.k8s.io/v1', ...stored });
        return true;
      }
    }
    void this.#readBody(req).then((text) => {
      const body = safeParse(text);
      if (body === null) {
        seen(400);
        return status(res, 400, 'BadRequest', 'the request body is not a JSON object');
      }
      if (verb === 'create') {
        const meta = (body.metadata ?? {}) as Record<string, unknown>;
        const eventName = typeof meta.name === 'string' ? meta.name : '';
        const errors = this.#eventErrors(body, namespace);
        if (errors.length > 0) return invalid(eventName, errors);
        if (this.#events.has(`${namespace}/${eventName}`)) {
          seen(409);
          return status(res, 409, 'AlreadyExists', `events.events.k8s.io "${eventName}" already exists`);
        }
        const { kind: _k, apiVersion: _a, ...rest } = body;
        const event = { ...rest, metadata: { ...meta, namespace, uid: randomUUID(), resourceVersion: String(++this.#rv), creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z') } };
        this.#events.set(`${namespace}/${eventName}`, event);
        return answer(201, { kind: 'Event', apiVersion: 'events.k8s.io/v1', ...event });
      }
      const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim();
      if (type !== 'application/strategic-merge-patch+json' && type !== 'application/merge-patch+json') {
        seen(415);
        return status(res, 415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/strategic-merge-patch+json, application/merge-patch+json (got ${type ?? 'none'})`);
      }
      const current = stored as Record<string, unknown>;
      const next = mergePatch(current, body) as Record<string, unknown>;
      const errors: string[] = [];
      for (const field of EVENT_IMMUTABLE) if (JSON.stringify(next[field]) !== JSON.stringify(current[field])) errors.push(`${field}: Invalid value: "": field is immutable`);
      if (JSON.stringify(next.series) !== JSON.stringify(current.series)) errors.push(...seriesErrors(next.series));
      if (errors.length > 0) return invalid(name, errors);
      const meta = { ...(current.metadata as Record<string, unknown>), resourceVersion: String(++this.#rv) };
      const event = { ...next, metadata: meta };
      this.#events.set(`${namespace}/${name}`, event);
      return answer(200, { kind: 'Event', apiVersion: 'events.k8s.io/v1', ...event });
    });
    return true;
  }

  /** /version and the legacy discovery documents, as kubectl reads them before it can name a resource. */
  #discovery(url: URL, res: ServerResponse, seen: (status: number) => void): boolean {
    const answer = (object: unknown) => {
      seen(200);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(object));
      return true;
    };
    const path = url.pathname.replace(/\/$/, '');
    if (path === '/version') return answer({ major: '1', minor: '32', gitVersion: 'v1.32.0', platform: 'linux/amd64' });
    if (path === '/api') return answer({ kind: 'APIVersions', versions: ['v1'], serverAddressByClientCIDRs: [{ clientCIDR: '0.0.0.0/0', serverAddress: `127.0.0.1:${this.#port}` }] });
    const groups = Object.keys(DISCOVERY).filter((gv) => gv.includes('/'));
    if (path === '/apis') {
      return answer({
        kind: 'APIGroupList',
        apiVersion: 'v1',
        groups: groups.map((gv) => {
          const [name = '', version = ''] = gv.split('/');
          return { name, versions: [{ groupVersion: gv, version }], preferredVersion: { groupVersion: gv, version } };
        }),
      });
    }
    const gv = path === '/api/v1' ? 'v1' : path.startsWith('/apis/') ? path.slice('/apis/'.length) : null;
    const resources = gv === null ? undefined : DISCOVERY[gv];
    if (gv === null || resources === undefined) return false;
    return answer({ kind: 'APIResourceList', apiVersion: 'v1', groupVersion: gv, resources });
  }

  /** The stored Events as core v1 Events (kube-apiserver serves one store under both APIs), filtered by a fieldSelector of `field=value` terms. */
  #coreEvents(namespace: string, selector: string, res: ServerResponse, seen: (status: number) => void): void {
    const terms: [string, string][] = [];
    for (const term of selector.split(',').filter((t) => t !== '')) {
      const m = /^([^=!]+)==?(.*)$/.exec(term);
      const field = m?.[1];
      if (m === null || field === undefined || EVENT_FIELDS[field] === undefined) {
        seen(400);
        return status(res, 400, 'BadRequest', `"${term.split(/[=!]/)[0] ?? term}" is not a known field selector: only "${Object.keys(EVENT_FIELDS).join('", "')}"`);
      }
      terms.push([field, m[2] ?? '']);
    }
    const items = this.events(namespace)
      .map(coreEvent)
      .filter((e) => terms.every(([field, value]) => String(EVENT_FIELDS[field]?.(e) ?? '') === value));
    seen(200);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'EventList', apiVersion: 'v1', metadata: { resourceVersion: String(this.#rv) }, items }));
  }

  /** A namespace's EndpointSlices with every `key=value` label of the selector (how kubectl describe service finds a Service's slices). */
  #namespacedSlices(namespace: string, selector: string, res: ServerResponse, seen: (status: number) => void): void {
    if (this.forbidden.has('endpointslices')) {
      seen(403);
      return status(res, 403, 'Forbidden', `endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:conntrail:conntrail-collector" cannot list resource "endpointslices" in API group "discovery.k8s.io" in the namespace "${namespace}"`);
    }
    const wanted = selector
      .split(',')
      .filter((t) => t !== '')
      .map((t) => t.split(/==?/) as [string, string?]);
    const items = [...this.#objects.endpointslices.values()].filter((o) => {
      const meta = o.metadata as { namespace?: string; labels?: Record<string, string> };
      return meta.namespace === namespace && wanted.every(([k, v]) => meta.labels?.[k] === (v ?? ''));
    });
    seen(200);
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'EndpointSliceList', apiVersion: 'discovery.k8s.io/v1', metadata: { resourceVersion: String(this.#rv) }, items }));
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
    if (TOKEN_REVIEWS.test(url.pathname) && req.method === 'POST') {
      if (this.forbidden.has('tokenreviews')) {
        seen(403);
        return status(res, 403, 'Forbidden', 'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:conntrail:conntrail-collector" cannot create resource "tokenreviews" in API group "authentication.k8s.io" at the cluster scope');
      }
      return this.#tokenReview(req, res, seen);
    }
    if (req.method === 'GET' && this.#discovery(url, res, seen)) return;
    if (this.#eventsRequest(req, res, url, seen)) return;
    const coreEvents = CORE_NS_EVENTS.exec(url.pathname);
    if (coreEvents !== null && req.method === 'GET') return this.#coreEvents(decodeURIComponent(coreEvents[1] ?? ''), query.fieldSelector ?? '', res, seen);
    const slices = NS_ENDPOINTSLICES.exec(url.pathname);
    if (slices !== null && req.method === 'GET' && query.watch === undefined) return this.#namespacedSlices(decodeURIComponent(slices[1] ?? ''), query.labelSelector ?? '', res, seen);
    const svc = ONE_SERVICE.exec(url.pathname);
    if (svc !== null && req.method === 'GET') {
      const [namespace, name] = [decodeURIComponent(svc[1] ?? ''), decodeURIComponent(svc[2] ?? '')];
      if (this.forbidden.has('services')) {
        seen(403);
        return status(res, 403, 'Forbidden', `services "${name}" is forbidden: User "system:serviceaccount:conntrail:conntrail-collector" cannot get resource "services" in API group "" in the namespace "${namespace}"`);
      }
      const service = this.#objects.services.get(`${namespace}/${name}`);
      if (service === undefined) {
        seen(404);
        return status(res, 404, 'NotFound', `services "${name}" not found`);
      }
      seen(200);
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ kind: 'Service', apiVersion: 'v1', ...service }));
    }
    const one = ONE_POD.exec(url.pathname);
    if (one !== null && req.method === 'GET') {
      const [namespace, name] = [decodeURIComponent(one[1] ?? ''), decodeURIComponent(one[2] ?? '')];
      if (this.forbidden.has('pods')) {
        seen(403);
        return status(res, 403, 'Forbidden', `pods "${name}" is forbidden: User "system:serviceaccount:conntrail:conntrail-collector" cannot get resource "pods" in API group "" in the namespace "${namespace}"`);
      }
      const pod = this.#objects.pods.get(`${namespace}/${name}`);
      if (pod === undefined) {
        seen(404);
        return status(res, 404, 'NotFound', `pods "${name}" not found`);
      }
      seen(200);
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ kind: 'Pod', apiVersion: 'v1', ...pod }));
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

function safeParse(text: string): Record<string, unknown> | null {
  try {
    const v = JSON.parse(text) as unknown;
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** An events.k8s.io/v1 Event as core v1 shows it (pkg/apis/events/v1 Convert_v1_Event_To_core_Event, through the internal type). */
function coreEvent(e: Record<string, unknown>): Record<string, unknown> {
  const { kind: _k, apiVersion: _a, regarding, note, reportingController, deprecatedSource, deprecatedFirstTimestamp, deprecatedLastTimestamp, deprecatedCount, ...rest } = e;
  return {
    ...rest,
    involvedObject: regarding ?? {},
    message: note ?? '',
    reportingComponent: reportingController ?? '',
    source: deprecatedSource ?? {},
    firstTimestamp: deprecatedFirstTimestamp ?? null,
    lastTimestamp: deprecatedLastTimestamp ?? null,
    ...(deprecatedCount === undefined ? {} : { count: deprecatedCount }),
  };
}

/** RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch;
  const out: Record<string, unknown> = typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Record<string, unknown>) } : {};
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

/** validateV1EventSeries: a series counts at least 2 and says when it was last seen. */
function seriesErrors(series: unknown): string[] {
  if (series === undefined || series === null) return [];
  const s = series as { count?: unknown; lastObservedTime?: unknown };
  const errors: string[] = [];
  if (typeof s.count !== 'number' || s.count < 2) errors.push('series.count: Invalid value: "": should be at least 2');
  if (typeof s.lastObservedTime !== 'string' || Number.isNaN(Date.parse(s.lastObservedTime))) errors.push('series.lastObservedTime: Required value');
  return errors;
}
