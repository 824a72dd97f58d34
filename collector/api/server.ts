// Sockets around the collector core: agents over WebSocket (subprotocol =
// protocol version), people and tools over a small HTTP API. With a token
// configured, everything but /healthz needs `Authorization: Bearer TOKEN`;
// a refused request gets a 401 and nothing else. Agents may instead (or
// also: --agent-auth) prove their node with a ServiceAccount token the
// Kubernetes API reviews (../receive/token-review.ts); such a connection may
// then only say hello as that node.
import { timingSafeEqual, createHash } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import { DURATION_HINT, parseDuration } from '../../contract/duration.ts';
import { isNodeName, SUBPROTOCOL } from '../../contract/protocol.ts';
import { isSourceName } from '../../contract/sources.ts';
import { BundleBusy, type BundleService } from '../incidents/bundle-service.ts';
import type { PackedBundle } from '../incidents/bundle.ts';
import type { StoreStatus } from '../store/store.ts';
import type { FindingLine } from '../detection/aggregate.ts';
import { findingLogLine } from '../detection/finding-log.ts';
import { serveAgent } from '../receive/agent-socket.ts';
import type { Collector } from '../receive/collector.ts';
import type { AgentAuthMode, Review } from '../receive/token-review.ts';
import { serveMetrics, type MetricsSource } from './metrics.ts';

/** Records streamed per write while answering a records request, between waits for the socket to drain. */
const STREAM_BATCH = 500;

export interface ServerOptions {
  readonly collector: Collector;
  readonly log: Logger;
  readonly token: string | null;
  readonly tls?: { readonly cert: string; readonly key: string };
  /** Largest frame an agent may send; snapshot frames are chunked well below it. */
  readonly maxPayload?: number;
  readonly bundles?: BundleService;
  /** The durable store: its writing is reported in /api/nodes, its finding lines served by /api/findings. */
  readonly store?: { status(): StoreStatus; findingLines(from: number, unreadable?: { count: number }): Iterable<FindingLine> } | null;
  /** The Services each node's rules program, as the detectors see them (GET /api/nodes/:node/services). */
  readonly services?: (node: string) => readonly object[] | null;
  /** Ping interval and liveness limit, shortened by tests. */
  readonly pingIntervalMs?: number;
  readonly livenessMs?: number;
  readonly helloTimeoutMs?: number;
  /** How long a client may take to send its request line and headers (10 s); shortened by tests. */
  readonly headersTimeoutMs?: number;
  /** How agents authenticate on the upgrade (default `token`: the shared token alone, as without a cluster). */
  readonly agentAuth?: AgentAuthMode;
  /** Reviews ServiceAccount tokens for `tokenreview` and `both`; it must never reject, and bounds its own wait. */
  readonly reviewer?: { review(token: string): Promise<Review> } | null;
  /** Prometheus metrics at GET /metrics, behind the token like the API (./metrics.ts). */
  readonly metrics?: MetricsSource;
}

/** What the upgrade's credentials allow: the node they were issued on (null: any), or a refusal with its reason. */
type AgentAuth = { readonly ok: true; readonly boundNode: string | null; readonly pod: string | null } | { readonly ok: false; readonly status: 401 | 503; readonly reason: string };

export interface ListenTarget {
  readonly host?: string;
  readonly port?: number;
  readonly path?: string;
}

export function parseListen(text: string): ListenTarget {
  if (text.startsWith('unix:')) return { path: text.slice(5) };
  const i = text.lastIndexOf(':');
  const host = i > 0 ? text.slice(0, i).replace(/^\[|\]$/g, '') : '0.0.0.0';
  const port = Number(i >= 0 ? text.slice(i + 1) : text);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--listen: ${JSON.stringify(text)} is not HOST:PORT or unix:PATH`);
  return { host, port };
}

export class CollectorServer {
  readonly #o: ServerOptions;
  readonly #http: Server;
  readonly #wss: WebSocketServer;
  readonly #tokenDigest: Buffer | null;
  #stopSweeping: (() => void) | null = null;

  constructor(options: ServerOptions) {
    this.#o = options;
    this.#tokenDigest = options.token === null ? null : digest(options.token);
    // Node checks the headers timeout only every connectionsCheckingInterval (30 s by default): a slow client held on for up to 40 s.
    const http = { connectionsCheckingInterval: 1_000 };
    this.#http = options.tls ? createHttpsServer({ ...http, cert: options.tls.cert, key: options.tls.key }) : createHttpServer(http);
    // A client that never finishes its request line and headers is closed, authenticated or not.
    this.#http.headersTimeout = options.headersTimeoutMs ?? 10_000;
    this.#http.requestTimeout = 30_000;
    this.#http.on('clientError', (err: NodeJS.ErrnoException, socket: Duplex) => {
      this.#counts.badRequests++;
      if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      else socket.destroy();
      void err;
    });
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: options.maxPayload ?? 64 * 1024 * 1024,
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    this.#http.on('request', (req, res) => this.#onRequest(req, res));
    this.#http.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
  }

  listen(target: ListenTarget): Promise<AddressInfo | string> {
    // A listening collector runs for days: it must let go of nodes that left.
    this.#stopSweeping ??= this.#o.collector.startSweeping();
    return new Promise((resolve, reject) => {
      this.#http.once('error', reject);
      const done = () => {
        this.#http.off('error', reject);
        const addr = this.#http.address();
        resolve(addr ?? '');
      };
      if (target.path !== undefined) this.#http.listen(target.path, done);
      else this.#http.listen(target.port ?? 0, target.host ?? '0.0.0.0', done);
    });
  }

  close(): Promise<void> {
    this.#stopSweeping?.();
    this.#stopSweeping = null;
    for (const ws of this.#wss.clients) ws.terminate();
    for (const socket of this.#reviewing) socket.destroy();
    this.#wss.close();
    return new Promise((resolve) => {
      this.#http.close(() => resolve());
      this.#http.closeAllConnections();
    });
  }

  readonly #counts = { badRequests: 0 };

  /** Requests answered 400 before routing (a request line or header Node could not parse). */
  get badRequests(): number {
    return this.#counts.badRequests;
  }

  #authorised(req: IncomingMessage): boolean {
    if (this.#tokenDigest === null) return true;
    const token = bearerToken(req.headers.authorization);
    return token !== null && timingSafeEqual(digest(token), this.#tokenDigest);
  }

  /** Upgrades waiting on a token review: ended with the server. */
  readonly #reviewing = new Set<Duplex>();

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const remote = `${req.socket.remoteAddress ?? 'unix'}:${req.socket.remotePort ?? ''}`;
    // Node drops its own error handler before it emits 'upgrade': a peer that
    // resets while its token is reviewed must not crash the collector.
    const onError = () => socket.destroy();
    socket.on('error', onError);
    this.#reviewing.add(socket);
    void this.#authenticateAgent(req)
      .catch((err: unknown): AgentAuth => ({ ok: false, status: 503, reason: `token review failed: ${err instanceof Error ? err.message : String(err)}` }))
      .then((auth) => {
        this.#reviewing.delete(socket);
        if (socket.destroyed) return;
        if (!auth.ok) {
          // Never the URL or the header: a token put in a query string would land in the log.
          // An API outage is the reviewer's to log, once; each refused connection is not.
          if (auth.status === 401) this.#o.log.warn({ remote, reason: auth.reason }, 'refused an agent connection');
          else this.#o.log.debug({ remote, reason: auth.reason }, 'refused an agent connection: tokens cannot be reviewed now');
          if (auth.status === 401) socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
          else {
            const body = JSON.stringify({ error: 'the agent token cannot be reviewed now', reason: auth.reason });
            socket.end(`HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
          }
          return;
        }
        const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
        if (!offered.includes(SUBPROTOCOL)) {
          this.#o.log.warn({ remote, offeredCount: offered.length }, `refused an agent connection: it does not speak ${SUBPROTOCOL}`);
          socket.end('HTTP/1.1 426 Upgrade Required\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
          return;
        }
        if (auth.boundNode !== null) this.#o.log.debug({ remote, provenNode: auth.boundNode, pod: auth.pod }, 'agent token reviewed: this connection speaks only for its node');
        socket.off('error', onError);
        this.#wss.handleUpgrade(req, socket, head, (ws) => this.#onAgent(ws, remote, auth.boundNode));
      });
  }

  /**
   * The agent's credentials. `token`: the shared token (or nothing, when none
   * is set). `tokenreview`: a ServiceAccount token the API vouches for, bound
   * to its pod's node; the shared token is refused here, since whoever holds
   * it could speak for any node. `both`: the shared token unbound, any other
   * token reviewed.
   */
  async #authenticateAgent(req: IncomingMessage): Promise<AgentAuth> {
    const mode = this.#o.agentAuth ?? 'token';
    const token = bearerToken(req.headers.authorization);
    const shared = token !== null && this.#tokenDigest !== null && timingSafeEqual(digest(token), this.#tokenDigest);
    const missing = req.headers.authorization ? 'wrong token' : 'no token';
    if (mode === 'token') return this.#tokenDigest === null || shared ? { ok: true, boundNode: null, pod: null } : { ok: false, status: 401, reason: missing };
    if (shared) {
      if (mode === 'both') return { ok: true, boundNode: null, pod: null };
      return { ok: false, status: 401, reason: 'the shared token opens the HTTP API, not the agent socket (--agent-auth tokenreview): agents present their ServiceAccount token' };
    }
    if (token === null) return { ok: false, status: 401, reason: req.headers.authorization ? 'not a bearer token' : 'no token' };
    const reviewer = this.#o.reviewer ?? null;
    if (reviewer === null) return { ok: false, status: 503, reason: 'no Kubernetes API to review agent tokens with' };
    const review = await reviewer.review(token);
    return review.ok ? { ok: true, boundNode: review.node, pod: review.pod } : review;
  }

  #onAgent(ws: WebSocket, remote: string, boundNode: string | null): void {
    serveAgent(ws, remote, this.#o.collector, this.#o.log, {
      boundNode,
      ...(this.#o.pingIntervalMs === undefined ? {} : { pingIntervalMs: this.#o.pingIntervalMs }),
      ...(this.#o.livenessMs === undefined ? {} : { livenessMs: this.#o.livenessMs }),
      ...(this.#o.helloTimeoutMs === undefined ? {} : { helloTimeoutMs: this.#o.helloTimeoutMs }),
    });
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const target = parseTarget(req.url);
    if (!target.ok) {
      this.#counts.badRequests++;
      return sendJson(res, 400, { error: target.error });
    }
    const { parts, query } = target;
    if (parts.length === 1 && parts[0] === 'healthz') return sendJson(res, 200, { ok: true });
    if (!this.#authorised(req)) {
      this.#o.log.warn({ remote: `${req.socket.remoteAddress ?? 'unix'}:${req.socket.remotePort ?? ''}`, route: routeOf(parts), reason: req.headers.authorization ? 'wrong token' : 'no token' }, 'refused an API request without a valid token');
      return sendJson(res, 401, { error: 'unauthorized' });
    }
    if (req.method !== 'GET') return sendJson(res, 405, { error: 'method not allowed' });
    if (parts.length === 1 && parts[0] === 'metrics' && this.#o.metrics !== undefined) return serveMetrics(res, this.#o.metrics);
    if (parts[0] !== 'api') return sendJson(res, 404, { error: 'not found' });
    if (parts[1] === 'nodes' && parts.length === 2) return sendJson(res, 200, this.#nodes());
    const node = parts[1] === 'nodes' ? parts[2] : undefined;
    if (node !== undefined && !isNodeName(node)) return sendJson(res, 400, { error: 'not a node name (lower-case DNS-1123 subdomain, at most 253 characters)' });
    if (node !== undefined && parts.length === 4 && parts[3] === 'services' && this.#o.services !== undefined) {
      const services = this.#o.collector.nodes.has(node) ? this.#o.services(node) : null;
      return services === null ? sendJson(res, 404, { error: 'no such node' }) : sendJson(res, 200, services);
    }
    const bundles = this.#o.bundles;
    if (bundles !== undefined && parts[1] === 'incidents') {
      if (parts.length === 2) return sendJson(res, 200, bundles.list());
      const id = parts[2] ?? '';
      if (!/^[A-Za-z0-9._-]{1,80}$/.test(id)) return sendJson(res, 400, { error: 'not an incident id' });
      if (parts.length === 3) {
        const d = bundles.describe(id);
        return d === undefined ? sendJson(res, 404, { error: `no incident ${JSON.stringify(id)}` }) : sendJson(res, 200, d);
      }
      if (parts.length === 4 && parts[3] === 'bundle') {
        void bundles.incidentBundle(id).then(
          (b) => (b === null ? sendJson(res, 404, { error: `no incident ${JSON.stringify(id)}` }) : this.#sendTarball(res, `conntrail-${id}.tar.gz`, b)),
          (err: unknown) => this.#bundleFailed(res, err),
        );
        return;
      }
    }
    if (bundles !== undefined && parts[1] === 'bundle' && parts.length === 2) {
      const since = parseDuration(query.get('since') ?? '10m');
      if (since === null) return sendJson(res, 400, { error: `since: expected ${DURATION_HINT}` });
      void bundles.recentBundle(since, Date.now()).then((b) => this.#sendTarball(res, 'conntrail-bundle.tar.gz', b), (err: unknown) => this.#bundleFailed(res, err));
      return;
    }
    if (parts[1] === 'findings' && parts.length === 2 && this.#o.store) {
      const since = parseDuration(query.get('since') ?? '15m');
      if (since === null) return sendJson(res, 400, { error: `since: expected ${DURATION_HINT}` });
      const from = Date.now() - since;
      const unreadable = { count: 0 };
      const lines = (function* (store: NonNullable<ServerOptions['store']>) {
        for (const l of store.findingLines(from, unreadable)) yield findingLogLine(l);
      })(this.#o.store);
      // NDJSON by default: each line is a log line, for `conntrail logs` and jq alike.
      const ndjson = query.get('format') !== 'json';
      // Only log lines in NDJSON, so that `conntrail logs` renders the answer as it renders the log.
      void streamRecords(res, ndjson ? null : { since: new Date(from).toISOString() }, lines, ndjson, 'findings').then(
        () => {
          if (unreadable.count > 0) this.#o.log.warn({ unreadable: unreadable.count }, 'stored finding lines that did not read back were left out of an answer');
        },
        (err: unknown) => {
          this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'findings answer ended early');
          res.destroy();
        },
      );
      return;
    }
    if (node !== undefined && parts.length === 4) {
      const view = this.#o.collector.nodes.get(node);
      if (view === undefined) return sendJson(res, 404, { error: `no node ${JSON.stringify(node)}` });
      const source = parts[3];
      if (!isSourceName(source)) return sendJson(res, 404, { error: 'no such source' });
      // A million conntrack records do not fit one string: stream them, waiting for the socket between batches.
      const records = view.frozenRecords(source);
      const ndjson = query.get('format') === 'ndjson' || (req.headers.accept ?? '').includes('application/x-ndjson');
      void streamRecords(res, { node: view.name, source, status: view.status(source) ?? null }, records, ndjson).catch((err: unknown) => {
        this.#o.log.warn({ node: view.name, source, err: err instanceof Error ? err.message : String(err) }, 'records answer ended early');
        res.destroy();
      });
      return;
    }
    return sendJson(res, 404, { error: 'not found' });
  }

  /** Streams the archive from its file: a client that goes away mid-way destroys the stream, which removes the file. */
  #sendTarball(res: ServerResponse, name: string, b: PackedBundle): void {
    if (res.destroyed) {
      b.stream.destroy();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': b.bytes, 'content-disposition': `attachment; filename="${name}"` });
    pipeline(b.stream, res).catch((err: unknown) => {
      this.#o.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'bundle answer ended early');
    });
  }

  #bundleFailed(res: ServerResponse, err: unknown): void {
    if (err instanceof BundleBusy) {
      if (!res.headersSent) {
        res.setHeader('retry-after', '30');
        sendJson(res, 503, { error: err.message });
      }
      return;
    }
    this.#o.log.error({ err }, 'could not build a bundle');
    if (!res.headersSent) sendJson(res, 500, { error: 'could not build the bundle; see the collector log' });
  }

  #nodes(): unknown {
    const now = Date.now();
    const c = this.#o.collector;
    return {
      nodes: [...c.nodes.values()].map((v) => ({
        node: v.name,
        connected: v.connected,
        agentVersion: v.agentVersion,
        kernel: v.facts?.kernel ?? null,
        lastSeq: v.lastSeq,
        lastSampleTime: v.lastSampleTime === null ? null : new Date(v.lastSampleTime).toISOString(),
        /** How far the node's picture lags the wall clock. */
        lagMs: v.lastSampleTime === null ? null : now - v.lastSampleTime,
        rejectedFrames: v.rejectedFrames,
        resyncs: v.resyncs,
        sourcesOverBound: v.overBound,
        bounds: c.bounds.list(v.name),
        sources: v.statuses().map((s) => ({ ...s, records: isSourceName(s.source) ? v.recordMap(s.source).size : 0 })),
      })),
      collector: {
        nodes: c.nodes.size,
        rejectedFrames: Object.fromEntries(c.rejected),
        badRequests: this.#counts.badRequests,
        // Bounds about no node (the collector's own, an incident's): a node's are listed with it.
        bounds: c.bounds.list().filter((b) => !c.nodes.has(b.subject)),
        memory: process.memoryUsage(),
        store: this.#o.store?.status() ?? null,
      },
    };
  }
}

/** The token of an `Authorization: Bearer …` header; the scheme is case-insensitive (RFC 7235). */
export function bearerToken(header: string | undefined): string | null {
  const m = /^bearer[ \t]+(\S+)[ \t]*$/i.exec(header ?? '');
  return m?.[1] ?? null;
}

type Target = { readonly ok: true; readonly parts: readonly string[]; readonly query: URLSearchParams } | { readonly ok: false; readonly error: string };

/**
 * The request target as path segments and query, or why not. Only origin-form
 * targets (`/path?query`) are served; every decoding step that can fail is
 * caught here, so no request line reaches a throw.
 */
export function parseTarget(raw: string | undefined): Target {
  if (raw === undefined || !raw.startsWith('/') || raw.startsWith('//')) return { ok: false, error: 'request target: expected an absolute path (/api/…)' };
  if (raw.length > 8192) return { ok: false, error: 'request target longer than 8192 characters' };
  const q = raw.indexOf('?');
  const path = q < 0 ? raw : raw.slice(0, q);
  const parts: string[] = [];
  for (const seg of path.split('/')) {
    if (seg === '') continue;
    let decoded: string;
    try {
      decoded = decodeURIComponent(seg);
    } catch {
      return { ok: false, error: 'request target: bad percent-escape in the path' };
    }
    parts.push(decoded);
  }
  let query: URLSearchParams;
  try {
    query = new URLSearchParams(q < 0 ? '' : raw.slice(q + 1));
  } catch {
    return { ok: false, error: 'request target: unreadable query' };
  }
  return { ok: true, parts, query };
}

/** A route for the log: fixed words kept, anything from the client replaced. */
function routeOf(parts: readonly string[]): string {
  const known = new Set(['api', 'nodes', 'incidents', 'bundle', 'findings', 'services', 'healthz', 'metrics']);
  return `/${parts.slice(0, 4).map((p) => (known.has(p) || isSourceName(p) ? p : ':x')).join('/')}`;
}

/** `head`, then the items: in NDJSON one line each (head first, unless null); in JSON one object, the head's fields and the items under `key`. */
async function streamRecords(res: ServerResponse, head: Record<string, unknown> | null, records: Iterable<unknown>, ndjson: boolean, key = 'records'): Promise<void> {
  res.writeHead(200, { 'content-type': ndjson ? 'application/x-ndjson' : 'application/json' });
  const write = async (text: string): Promise<void> => {
    if (res.destroyed) throw new Error('client went away');
    if (!res.write(text)) await new Promise<void>((resolve, reject) => {
      const done = () => {
        res.off('close', gone);
        resolve();
      };
      const gone = () => {
        res.off('drain', done);
        reject(new Error('client went away'));
      };
      res.once('drain', done);
      res.once('close', gone);
    });
  };
  if (ndjson) {
    if (head !== null) await write(`${JSON.stringify(head)}\n`);
  } else {
    const fields = head === null || Object.keys(head).length === 0 ? '{' : `${JSON.stringify(head).slice(0, -1)},`;
    await write(`${fields}${JSON.stringify(key)}:[`);
  }
  let batch: string[] = [];
  let first = true;
  const flush = async (): Promise<void> => {
    await write(ndjson ? `${batch.join('\n')}\n` : `${first ? '' : ','}${batch.join(',')}`);
    first = false;
    batch = [];
  };
  for (const r of records) {
    batch.push(JSON.stringify(r));
    if (batch.length >= STREAM_BATCH) await flush();
  }
  if (batch.length > 0) await flush();
  if (!ndjson) await write(']}');
  res.end();
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
