// Sockets around the collector core: agents over WebSocket (subprotocol =
// protocol version), people and tools over a small HTTP API. With a token
// configured, everything but /healthz needs `Authorization: Bearer TOKEN`;
// a refused request gets a 401 and nothing else.
import { timingSafeEqual, createHash } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocketServer, type WebSocket } from 'ws';
import { encode, SUBPROTOCOL } from '../contract/protocol.ts';
import { isSourceName } from '../contract/sources.ts';
import { parseSince, type BundleService } from './bundle-service.ts';
import type { Collector, Session } from './collector.ts';

export interface ServerOptions {
  readonly collector: Collector;
  readonly log: Logger;
  readonly token: string | null;
  readonly tls?: { readonly cert: string; readonly key: string };
  /** Largest frame an agent may send; snapshot frames are chunked well below it. */
  readonly maxPayload?: number;
  readonly bundles?: BundleService;
  /** The Services each node's rules program, as the detectors see them (GET /api/nodes/:node/services). */
  readonly services?: (node: string) => readonly object[] | null;
}

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

  constructor(options: ServerOptions) {
    this.#o = options;
    this.#tokenDigest = options.token === null ? null : digest(options.token);
    this.#http = options.tls ? createHttpsServer({ cert: options.tls.cert, key: options.tls.key }) : createHttpServer();
    this.#wss = new WebSocketServer({
      noServer: true,
      maxPayload: options.maxPayload ?? 64 * 1024 * 1024,
      handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
    });
    this.#http.on('request', (req, res) => this.#onRequest(req, res));
    this.#http.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
  }

  listen(target: ListenTarget): Promise<AddressInfo | string> {
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
    for (const ws of this.#wss.clients) ws.terminate();
    this.#wss.close();
    return new Promise((resolve) => {
      this.#http.close(() => resolve());
      this.#http.closeAllConnections();
    });
  }

  #authorised(req: IncomingMessage): boolean {
    if (this.#tokenDigest === null) return true;
    const header = req.headers.authorization ?? '';
    const m = /^Bearer (.+)$/.exec(header);
    if (m === null || m[1] === undefined) return false;
    return timingSafeEqual(digest(m[1]), this.#tokenDigest);
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const remote = `${req.socket.remoteAddress ?? 'unix'}:${req.socket.remotePort ?? ''}`;
    if (!this.#authorised(req)) {
      this.#o.log.warn({ remote, path: req.url, reason: req.headers.authorization ? 'wrong token' : 'no token' }, 'refused an agent connection');
      socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    const offered = (req.headers['sec-websocket-protocol'] ?? '').split(',').map((s) => s.trim());
    if (!offered.includes(SUBPROTOCOL)) {
      this.#o.log.warn({ remote, offered }, `refused an agent connection: it does not speak ${SUBPROTOCOL}`);
      socket.end('HTTP/1.1 426 Upgrade Required\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#onAgent(ws, remote));
  }

  #onAgent(ws: WebSocket, remote: string): void {
    const collector = this.#o.collector;
    const session: Session = {
      node: null,
      remote,
      send: (msg) => {
        if (ws.readyState === ws.OPEN) ws.send(encode(msg));
      },
    };
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        this.#o.log.warn({ remote, node: session.node }, 'rejected a binary frame');
        return;
      }
      collector.receive(session, data.toString());
    });
    ws.on('error', (err) => this.#o.log.warn({ remote, node: session.node, err: err.message }, 'agent socket error'));
    ws.on('close', (code) => collector.disconnect(session, code));
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://collector');
    if (url.pathname === '/healthz') return sendJson(res, 200, { ok: true });
    if (!this.#authorised(req)) {
      this.#o.log.warn({ remote: `${req.socket.remoteAddress ?? 'unix'}:${req.socket.remotePort ?? ''}`, path: url.pathname, reason: req.headers.authorization ? 'wrong token' : 'no token' }, 'refused an API request without a valid token');
      return sendJson(res, 401, { error: 'unauthorized' });
    }
    if (req.method !== 'GET') return sendJson(res, 405, { error: 'method not allowed' });
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    if (parts[0] !== 'api') return sendJson(res, 404, { error: 'not found' });
    if (parts[1] === 'nodes' && parts.length === 2) return sendJson(res, 200, this.#nodes());
    if (parts[1] === 'nodes' && parts.length === 4 && parts[3] === 'services' && this.#o.services !== undefined) {
      const services = this.#o.collector.nodes.has(parts[2] ?? '') ? this.#o.services(parts[2] ?? '') : null;
      return services === null ? sendJson(res, 404, { error: 'no such node' }) : sendJson(res, 200, services);
    }
    const bundles = this.#o.bundles;
    if (bundles !== undefined && parts[1] === 'incidents') {
      if (parts.length === 2) return sendJson(res, 200, bundles.list());
      const id = parts[2] ?? '';
      if (parts.length === 3) {
        const d = bundles.describe(id);
        return d === undefined ? sendJson(res, 404, { error: `no incident ${JSON.stringify(id)}` }) : sendJson(res, 200, d);
      }
      if (parts.length === 4 && parts[3] === 'bundle') {
        void bundles.incidentBundle(id).then(
          (buf) => (buf === null ? sendJson(res, 404, { error: `no incident ${JSON.stringify(id)}` }) : sendTarball(res, `conntrail-${id}.tar.gz`, buf)),
          (err: unknown) => this.#bundleFailed(res, err),
        );
        return;
      }
    }
    if (bundles !== undefined && parts[1] === 'bundle' && parts.length === 2) {
      const since = parseSince(url.searchParams.get('since') ?? '10m');
      if (since === null) return sendJson(res, 400, { error: 'since: expected a duration like 90s, 10m or 2h' });
      void bundles.recentBundle(since, Date.now()).then((buf) => sendTarball(res, 'conntrail-bundle.tar.gz', buf), (err: unknown) => this.#bundleFailed(res, err));
      return;
    }
    if (parts[1] === 'nodes' && parts.length === 4) {
      const view = this.#o.collector.nodes.get(parts[2] ?? '');
      if (view === undefined) return sendJson(res, 404, { error: `no node ${JSON.stringify(parts[2])}` });
      const source = parts[3];
      if (!isSourceName(source)) return sendJson(res, 404, { error: `no source ${JSON.stringify(source)}` });
      return sendJson(res, 200, { node: view.name, source, status: view.status(source) ?? null, records: view.records(source) });
    }
    return sendJson(res, 404, { error: 'not found' });
  }

  #bundleFailed(res: ServerResponse, err: unknown): void {
    this.#o.log.error({ err }, 'could not build a bundle');
    if (!res.headersSent) sendJson(res, 500, { error: 'could not build the bundle; see the collector log' });
  }

  #nodes(): unknown {
    const now = Date.now();
    return [...this.#o.collector.nodes.values()].map((v) => ({
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
      sources: v.statuses().map((s) => ({ ...s, records: isSourceName(s.source) ? v.recordMap(s.source).size : 0 })),
    }));
  }
}

function digest(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

function sendTarball(res: ServerResponse, name: string, buf: Buffer): void {
  res.writeHead(200, { 'content-type': 'application/gzip', 'content-length': buf.length, 'content-disposition': `attachment; filename="${name}"` });
  res.end(buf);
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
