// Which node an agent's connection may speak for, proven by the Kubernetes
// API rather than claimed by the agent. In a cluster each agent presents the
// projected ServiceAccount token the kubelet mounted into its pod (audience
// `conntrail`); the collector asks the API server about it with a TokenReview
// and takes the node from the token's pod binding. A token copied off one
// node therefore still speaks only for that node.
//
// Where the node comes from, in order:
//  - `status.user.extra["authentication.kubernetes.io/node-name"]`: the API
//    server embeds the bound pod's node in tokens it issues and returns it in
//    a TokenReview's user info (KEP-4193, feature ServiceAccountTokenPodNodeInfo:
//    beta and on by default in 1.30, GA in 1.32; the key is NodeNameKey in
//    kubernetes/kubernetes staging/src/k8s.io/apiserver/pkg/authentication/serviceaccount/util.go).
//  - older API servers only name the pod (`authentication.kubernetes.io/pod-name`,
//    `pod-uid`): the pod is read (`get` on pods, which the collector already
//    has) and its `spec.nodeName` taken.
//
// The TokenReview itself checks the signature, expiry, audience and that the
// bound pod still exists; this module checks the rest (the ServiceAccount, the
// audience in the answer, a node name that is one) and never lets a token into
// a log line or a cache key: cache keys are SHA-256 digests.
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { isNodeName } from '../../contract/protocol.ts';
import { findKubeConfig } from '../kube/watcher.ts';

/** The audience the agent's projected token is issued for (manifests/agent.yaml). */
export const AGENT_AUDIENCE = 'conntrail';
/** The agent DaemonSet's ServiceAccount as manifests/ deploy it. */
export const DEFAULT_AGENT_SERVICE_ACCOUNT = 'conntrail:conntrail-agent';

export const NODE_NAME_KEY = 'authentication.kubernetes.io/node-name';
export const POD_NAME_KEY = 'authentication.kubernetes.io/pod-name';
export const POD_UID_KEY = 'authentication.kubernetes.io/pod-uid';

/**
 * How agents authenticate: `token` the shared bearer token only (runs without
 * a cluster); `tokenreview` only a ServiceAccount token the API vouches for
 * (the shared token then opens the HTTP API but not the agent socket, since its
 * holder could speak for any node); `both` either, for a migration.
 */
export type AgentAuthMode = 'token' | 'tokenreview' | 'both';

export function parseAgentAuthMode(text: string): AgentAuthMode | null {
  return text === 'token' || text === 'tokenreview' || text === 'both' ? text : null;
}

export interface ServiceAccountRef {
  readonly namespace: string;
  readonly name: string;
}

/** `NAMESPACE:NAME`, each a DNS-1123 label/subdomain as Kubernetes allows for them. */
export function parseServiceAccount(text: string): ServiceAccountRef | null {
  const m = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?):([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)$/.exec(text);
  return m === null ? null : { namespace: m[1] ?? '', name: m[3] ?? '' };
}

export function serviceAccountUser(sa: ServiceAccountRef): string {
  return `system:serviceaccount:${sa.namespace}:${sa.name}`;
}

/** What a review decided: the node the token was issued on, or why not (401: the token; 503: the collector could not ask). */
export type Review =
  | { readonly ok: true; readonly node: string; readonly pod: string | null }
  | { readonly ok: false; readonly status: 401 | 503; readonly reason: string };

/** What the collector needs of the Kubernetes API; resolves to the API's JSON answers, throws what the client throws. */
export interface ReviewBackend {
  /** POST authentication.k8s.io/v1 TokenReview; resolves to the returned object. */
  createTokenReview(token: string, audiences: readonly string[], signal: AbortSignal): Promise<unknown>;
  /** GET /api/v1/namespaces/NS/pods/NAME; resolves to the Pod. */
  readPod(namespace: string, name: string, signal: AbortSignal): Promise<unknown>;
}

/** What the token's review says before any pod lookup: the pod to read, or the node already. */
type Decoded =
  | { readonly ok: true; readonly node: string; readonly pod: string | null }
  | { readonly ok: true; readonly node: null; readonly pod: string; readonly podUid: string | null }
  | { readonly ok: false; readonly reason: string };

const REASON_CHARS = 240;

/** Decodes a TokenReview answer (untrusted shape: every field checked). Pure. */
export function decodeTokenReview(review: unknown, expect: { readonly user: string; readonly audience: string }): Decoded {
  const status = field(review, 'status');
  if (!isObject(status)) return { ok: false, reason: 'the TokenReview came back without a status' };
  if (status.authenticated !== true) {
    const error = typeof status.error === 'string' && status.error !== '' ? status.error : 'not authenticated';
    return { ok: false, reason: `the API server did not authenticate the token: ${clip(error)}` };
  }
  const audiences = Array.isArray(status.audiences) ? status.audiences : [];
  if (!audiences.includes(expect.audience)) return { ok: false, reason: `the token is not for audience ${expect.audience}` };
  const user = field(status, 'user');
  const username = field(user, 'username');
  if (username !== expect.user) return { ok: false, reason: `the token belongs to ${typeof username === 'string' ? clip(username) : 'no user'}, not ${expect.user}` };
  const extra = field(user, 'extra');
  const node = single(field(extra, NODE_NAME_KEY));
  const pod = single(field(extra, POD_NAME_KEY));
  if (node !== null) {
    if (!isNodeName(node)) return { ok: false, reason: 'the token names a node that is not a Kubernetes node name' };
    return { ok: true, node, pod };
  }
  if (pod === null) return { ok: false, reason: "the token is not bound to a pod (mount it as a projected serviceAccountToken volume of the agent's pod)" };
  return { ok: true, node: null, pod, podUid: single(field(extra, POD_UID_KEY)) };
}

/** A Pod's `spec.nodeName`, or why it cannot be the token's node. Pure. */
export function nodeOfPod(pod: unknown, expectUid: string | null): { ok: true; node: string } | { ok: false; reason: string } {
  const uid = field(field(pod, 'metadata'), 'uid');
  if (expectUid !== null && uid !== expectUid) return { ok: false, reason: "the token's pod was replaced by another of the same name" };
  const node = field(field(pod, 'spec'), 'nodeName');
  if (typeof node !== 'string' || node === '') return { ok: false, reason: "the token's pod is not scheduled on a node" };
  if (!isNodeName(node)) return { ok: false, reason: "the token's pod names a node that is not a Kubernetes node name" };
  return { ok: true, node };
}

/** The `exp` claim of a JWT, in ms, read without verifying it: it only ever shortens how long a review is cached. */
export function jwtExpiry(token: string): number | null {
  const payload = token.split('.')[1];
  if (payload === undefined) return null;
  try {
    const exp = field(JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')), 'exp');
    return typeof exp === 'number' && Number.isFinite(exp) ? exp * 1000 : null;
  } catch {
    return null;
  }
}

export interface TokenReviewerOptions {
  readonly backend: ReviewBackend;
  readonly log: Logger;
  readonly serviceAccount: ServiceAccountRef;
  readonly audience?: string;
  /** How long an accepted token's review is reused; never past the token's own expiry. */
  readonly cacheTtlMs?: number;
  readonly maxCached?: number;
  /** The whole review (TokenReview plus the pod lookup) gives up after this. */
  readonly timeoutMs?: number;
  /** Reviews waiting on the API at once; beyond it a connection gets 503 at once. */
  readonly maxInFlight?: number;
  readonly now?: () => number;
}

interface Cached {
  readonly node: string;
  readonly pod: string | null;
  readonly until: number;
}

/**
 * Reviews agent tokens: cached briefly when accepted, one API call per token
 * at a time, bounded in time and in number. `review` never rejects. An API
 * that cannot be asked is logged once when it starts failing and once when
 * it answers again, not per connection.
 */
export class TokenReviewer {
  readonly #o: Required<Omit<TokenReviewerOptions, 'now'>> & { now: () => number };
  readonly #user: string;
  readonly #cache = new Map<string, Cached>();
  readonly #inFlight = new Map<string, Promise<Review>>();
  #outage: string | null = null;
  readonly counts = { reviews: 0, cacheHits: 0, accepted: 0, refused: 0, unavailable: 0 };

  constructor(options: TokenReviewerOptions) {
    this.#o = {
      audience: AGENT_AUDIENCE,
      cacheTtlMs: 60_000,
      maxCached: 4_096,
      timeoutMs: 5_000,
      maxInFlight: 64,
      ...options,
      now: options.now ?? Date.now,
    };
    this.#user = serviceAccountUser(options.serviceAccount);
  }

  /** The ServiceAccount user a token must belong to. */
  get user(): string {
    return this.#user;
  }

  /** Why the API cannot be asked right now, or null. */
  get outage(): string | null {
    return this.#outage;
  }

  review(token: string): Promise<Review> {
    const key = createHash('sha256').update(token).digest('hex');
    const now = this.#o.now();
    const hit = this.#cache.get(key);
    if (hit !== undefined && hit.until > now) {
      this.counts.cacheHits++;
      return Promise.resolve({ ok: true, node: hit.node, pod: hit.pod });
    }
    if (hit !== undefined) this.#cache.delete(key);
    const pending = this.#inFlight.get(key);
    if (pending !== undefined) return pending;
    if (this.#inFlight.size >= this.#o.maxInFlight) {
      this.counts.unavailable++;
      return Promise.resolve({ ok: false, status: 503, reason: `${this.#o.maxInFlight} token reviews already waiting on the Kubernetes API` });
    }
    const p = this.#ask(token).then(
      (r) => this.#settle(key, token, r),
      (err: unknown) => this.#settle(key, token, { ok: false, status: 503, reason: `token review failed: ${describe(err)}` }),
    );
    this.#inFlight.set(key, p);
    return p;
  }

  #settle(key: string, token: string, r: Review): Review {
    this.#inFlight.delete(key);
    if (r.ok) {
      this.counts.accepted++;
      const exp = jwtExpiry(token);
      const now = this.#o.now();
      const until = Math.min(now + this.#o.cacheTtlMs, exp ?? Number.POSITIVE_INFINITY);
      if (until > now) {
        // Map order is insertion order: the oldest entry goes first.
        while (this.#cache.size >= this.#o.maxCached) {
          const oldest = this.#cache.keys().next();
          if (oldest.done === true) break;
          this.#cache.delete(oldest.value);
        }
        this.#cache.set(key, { node: r.node, pod: r.pod, until });
      }
    } else if (r.status === 401) this.counts.refused++;
    else this.counts.unavailable++;
    return r;
  }

  async #ask(token: string): Promise<Review> {
    this.counts.reviews++;
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    // The race, not only the signal, bounds the wait: a client that ignored the signal still cannot hang an upgrade.
    const timeout = new Promise<Review>((resolve) => {
      timer = setTimeout(() => {
        controller.abort();
        resolve(this.#unavailable(`the Kubernetes API did not answer within ${this.#o.timeoutMs} ms`));
      }, this.#o.timeoutMs);
      timer.unref();
    });
    try {
      return await Promise.race([this.#reviewAndLocate(token, controller.signal), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  async #reviewAndLocate(token: string, signal: AbortSignal): Promise<Review> {
    // Once the wait is over (timed out), a late answer or failure says nothing more: the outage stays as logged.
    const late: Review = { ok: false, status: 503, reason: 'answered after the timeout' };
    let answer: unknown;
    try {
      answer = await this.#o.backend.createTokenReview(token, [this.#o.audience], signal);
    } catch (err) {
      return signal.aborted ? late : this.#unavailable(`TokenReview: ${describeApiError(err, 'create tokenreviews.authentication.k8s.io')}`);
    }
    if (signal.aborted) return late;
    this.#available();
    const decoded = decodeTokenReview(answer, { user: this.#user, audience: this.#o.audience });
    if (!decoded.ok) return { ok: false, status: 401, reason: decoded.reason };
    if (decoded.node !== null) return { ok: true, node: decoded.node, pod: decoded.pod };
    const namespace = this.#o.serviceAccount.namespace;
    let pod: unknown;
    try {
      pod = await this.#o.backend.readPod(namespace, decoded.pod, signal);
    } catch (err) {
      if (signal.aborted) return late;
      if (statusOf(err) === 404) return { ok: false, status: 401, reason: "the token's pod no longer exists" };
      return this.#unavailable(`reading the token's pod: ${describeApiError(err, 'get pods')}`);
    }
    const located = nodeOfPod(pod, decoded.podUid);
    return located.ok ? { ok: true, node: located.node, pod: decoded.pod } : { ok: false, status: 401, reason: located.reason };
  }

  #unavailable(reason: string): Review {
    if (this.#outage === null)
      this.#o.log.error({ reason }, 'cannot review agent tokens with the Kubernetes API: agents presenting ServiceAccount tokens are refused with 503 until it answers');
    this.#outage = reason;
    return { ok: false, status: 503, reason };
  }

  #available(): void {
    if (this.#outage === null) return;
    this.#o.log.info({ after: this.#outage }, 'the Kubernetes API answers token reviews again');
    this.#outage = null;
  }
}

/**
 * The Kubernetes API for reviews, through @kubernetes/client-node, from the
 * same config the watcher would use (--kubeconfig, in-cluster, $KUBECONFIG,
 * ~/.kube/config); null when there is none. The client is loaded only here.
 */
export async function kubeReviewBackend(opts: { readonly kubeconfig?: string; readonly env?: NodeJS.ProcessEnv }): Promise<{ readonly backend: ReviewBackend; readonly source: string } | null> {
  const source = findKubeConfig(opts.kubeconfig, opts.env);
  if (source === null) return null;
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  if (source === 'in-cluster') config.loadFromCluster();
  else config.loadFromFile(source);
  const server = config.getCurrentCluster()?.server;
  if (server === undefined) throw new Error(`${source}: no current cluster`);
  // makeApiClient's configuration, plus a middleware that gives each request its own abort signal.
  const clients = (signal: AbortSignal) => {
    const conf = k8s.createConfiguration({
      baseServer: new k8s.ServerConfiguration(server, {}),
      authMethods: { default: config },
      promiseMiddleware: [
        {
          pre: (ctx) => {
            ctx.setSignal(signal);
            return Promise.resolve(ctx);
          },
          post: (ctx) => Promise.resolve(ctx),
        },
      ],
    });
    return { auth: new k8s.AuthenticationV1Api(conf), core: new k8s.CoreV1Api(conf) };
  };
  return {
    source,
    backend: {
      createTokenReview: (token, audiences, signal) =>
        clients(signal).auth.createTokenReview({ body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences: [...audiences] } } }),
      readPod: (namespace, name, signal) => clients(signal).core.readNamespacedPod({ namespace, name }),
    },
  };
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function field(v: unknown, key: string): unknown {
  return isObject(v) && Object.hasOwn(v, key) ? v[key] : undefined;
}

/** An `extra` value: a list holding exactly one non-empty string. */
function single(v: unknown): string | null {
  return Array.isArray(v) && v.length === 1 && typeof v[0] === 'string' && v[0] !== '' ? v[0] : null;
}

function clip(s: string): string {
  const flat = s.replace(/[\u0000-\u001f]/g, ' ');
  return flat.length > REASON_CHARS ? `${flat.slice(0, REASON_CHARS)}…` : flat;
}

function statusOf(err: unknown): number | null {
  const code = field(err, 'code');
  return typeof code === 'number' ? code : null;
}

/** An API failure in words for the log: the status and the API's own message, or the network error; 401/403 name what the collector lacks. */
function describeApiError(err: unknown, needs: string): string {
  const code = statusOf(err);
  const body = field(err, 'body');
  let message: string | null = null;
  if (typeof body === 'string') {
    try {
      const parsed = field(JSON.parse(body), 'message');
      message = typeof parsed === 'string' ? parsed : null;
    } catch {
      message = null;
    }
  }
  if (code === 401) return `401: the API server does not accept the collector's own credentials${message === null ? '' : ` (${clip(message)})`}`;
  if (code === 403) return `403: the collector's ServiceAccount may not ${needs} (manifests/rbac.yaml)${message === null ? '' : ` (${clip(message)})`}`;
  if (code !== null) return `${code}${message === null ? '' : `: ${clip(message)}`}`;
  return describe(err);
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return clip(String(err));
  const cause = err.cause instanceof Error ? `: ${err.cause.message}` : '';
  const code = field(err.cause, 'code') ?? field(err, 'code');
  return clip(`${err.message.split('\n')[0] ?? ''}${cause}${typeof code === 'string' ? ` [${code}]` : ''}`);
}

/**
 * The collector's `--agent-auth` and `--agent-service-account` flags, resolved.
 * Without `--agent-auth`: `tokenreview` when the collector runs in a cluster
 * (in-cluster config, the API not turned off), else `token`, so a collector
 * deployed from manifests/ proves nodes and one started by hand works as before.
 */
export async function agentAuthFromFlags(o: {
  readonly mode: string | undefined;
  readonly serviceAccount: string;
  readonly kubeconfig?: string;
  readonly noKubernetes: boolean;
  readonly log: Logger;
  readonly env?: NodeJS.ProcessEnv;
}): Promise<{ readonly ok: true; readonly mode: AgentAuthMode; readonly reviewer: TokenReviewer | null } | { readonly ok: false; readonly error: string }> {
  const inCluster = !o.noKubernetes && findKubeConfig(o.kubeconfig, o.env) === 'in-cluster';
  const mode = o.mode === undefined ? (inCluster ? 'tokenreview' : 'token') : parseAgentAuthMode(o.mode);
  if (mode === null) return { ok: false, error: `--agent-auth: ${JSON.stringify(o.mode)} is not token, tokenreview or both` };
  const serviceAccount = parseServiceAccount(o.serviceAccount);
  if (serviceAccount === null) return { ok: false, error: `--agent-service-account: ${JSON.stringify(o.serviceAccount)} is not NAMESPACE:NAME` };
  if (mode === 'token') return { ok: true, mode, reviewer: null };
  if (o.noKubernetes) return { ok: false, error: `--agent-auth ${mode} reviews tokens with the Kubernetes API, which --no-kubernetes turns off` };
  let api: Awaited<ReturnType<typeof kubeReviewBackend>>;
  try {
    api = await kubeReviewBackend({ ...(o.kubeconfig === undefined ? {} : { kubeconfig: o.kubeconfig }), ...(o.env === undefined ? {} : { env: o.env }) });
  } catch (err) {
    return { ok: false, error: `--agent-auth ${mode}: the Kubernetes API config could not be loaded: ${describe(err)}` };
  }
  if (api === null) return { ok: false, error: `--agent-auth ${mode} needs the Kubernetes API (in-cluster, --kubeconfig, $KUBECONFIG or ~/.kube/config): none found` };
  const reviewer = new TokenReviewer({ backend: api.backend, log: o.log.child({ kubernetes: api.source }), serviceAccount });
  o.log.info({ agentAuth: mode, serviceAccount: reviewer.user, audience: AGENT_AUDIENCE }, 'agents prove their node with a ServiceAccount token (TokenReview)');
  return { ok: true, mode, reviewer };
}
