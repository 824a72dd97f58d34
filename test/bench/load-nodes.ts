// The load generator's simulated nodes (run by collector-load.ts in a
// process of its own, so their work does not share the prober's event loop):
// N agents speaking conntrail.v1 over real WebSockets to a collector, each
// with E conntrack entries the project's parser read from realistic lines,
// changed at a churn rate per second (a third added, a third removed, a third
// moved to another state on the same tuple) as diffs, one a second, in
// sequence. A resync request gets a new snapshot, as the agent would send.
// Args: URL TOKEN NODES ENTRIES CHURN SEED. Writes one JSON line when every
// snapshot is sent, then one per second with what was sent.
import { WebSocket } from 'ws';
import { SUBPROTOCOL, SNAPSHOT_CHUNK } from '../../contract/protocol.ts';
import { specOf } from '../../contract/sources.ts';
import { rng } from '../helpers/rng.ts';
import { lineMaker, recordOf } from './conntrack-lines.ts';

const [url = '', token = '', nodesArg = '10', entriesArg = '5000', churnArg = '0.01', seedArg = '1'] = process.argv.slice(2);
const NODES = Number(nodesArg);
const ENTRIES = Number(entriesArg);
const CHURN = Number(churnArg);
const keyOf = specOf('conntrack').keyOf;

interface SimNode {
  readonly name: string;
  readonly ws: WebSocket;
  readonly maker: ReturnType<typeof lineMaker>;
  readonly pick: () => number;
  /** Entries held: line and key by index (swap-removed). */
  readonly lines: string[];
  readonly keys: string[];
  seq: number;
  ready: boolean;
}

const status = (n: number) => [{ source: 'conntrack', state: 'ok', via: '/proc/net/nf_conntrack', reason: null, records: n, problemCount: 0, problems: [], durationMs: 12 }];

function sendSnapshot(n: SimNode): void {
  n.seq++;
  const time = Date.now();
  const parts = Math.max(1, Math.ceil(n.lines.length / SNAPSHOT_CHUNK));
  for (let p = 0; p < parts; p++) {
    // Records are made from the lines as they are sent, as the agent makes them from its packed cache.
    const records = n.lines.slice(p * SNAPSHOT_CHUNK, (p + 1) * SNAPSHOT_CHUNK).map(recordOf);
    n.ws.send(JSON.stringify({ v: 1, type: 'snapshot', seq: n.seq, time, source: 'conntrack', part: p, parts, records }));
  }
  n.ws.send(JSON.stringify({ v: 1, type: 'snapshot-end', seq: n.seq, time, status: status(n.lines.length) }));
  n.ready = true;
}

function tick(n: SimNode): number {
  const count = Math.max(1, Math.round(n.lines.length * CHURN));
  const added: ReturnType<typeof recordOf>[] = [];
  const removed: string[] = [];
  const changed: ReturnType<typeof recordOf>[] = [];
  const touched = new Set<string>();
  for (let i = 0; i < count; i++) {
    const what = i % 3;
    if (what === 0) {
      const line = n.maker.fresh();
      const rec = recordOf(line);
      const key = keyOf(rec);
      if (touched.has(key)) continue;
      touched.add(key);
      n.lines.push(line);
      n.keys.push(key);
      added.push(rec);
    } else {
      const at = Math.floor(n.pick() * n.lines.length);
      const key = n.keys[at] ?? '';
      if (touched.has(key)) continue;
      touched.add(key);
      if (what === 1) {
        removed.push(key);
        const lastLine = n.lines.pop() ?? '';
        const lastKey = n.keys.pop() ?? '';
        if (at < n.lines.length) {
          n.lines[at] = lastLine;
          n.keys[at] = lastKey;
        }
      } else {
        const line = n.maker.moved(n.lines[at] ?? '');
        n.lines[at] = line;
        changed.push(recordOf(line));
      }
    }
  }
  n.seq++;
  const frame = JSON.stringify({ v: 1, type: 'diff', seq: n.seq, time: Date.now(), changes: [{ source: 'conntrack', added, removed, changed, refreshed: [] }], status: [] });
  n.ws.send(frame);
  return frame.length;
}

function connect(i: number): Promise<SimNode> {
  const name = `load-node-${String(i).padStart(3, '0')}`;
  const maker = lineMaker(Number(seedArg) * 1000 + i, i);
  const lines: string[] = [];
  const keys: string[] = [];
  const seen = new Set<string>();
  while (lines.length < ENTRIES) {
    const line = maker.fresh();
    const key = keyOf(recordOf(line));
    if (seen.has(key)) continue;
    seen.add(key);
    lines.push(line);
    keys.push(key);
  }
  const ws = new WebSocket(url, SUBPROTOCOL, { headers: { Authorization: `Bearer ${token}` }, maxPayload: 16 * 1024 * 1024 });
  const n: SimNode = { name, ws, maker, pick: rng(i + 17), lines, keys, seq: 0, ready: false };
  return new Promise((resolve, reject) => {
    ws.once('error', reject);
    ws.once('open', () => {
      const now = Date.now();
      ws.send(JSON.stringify({ v: 1, type: 'hello', node: name, agentVersion: 'load-0', intervalMs: 1000, startedAt: now }));
      ws.send(JSON.stringify({ v: 1, type: 'facts', facts: { hostname: name, kernel: '6.1.0-load', os: 'Debian GNU/Linux 12', arch: 'x64', cpus: 8, memoryBytes: 32 * 2 ** 30, interfaces: [] } }));
      sendSnapshot(n);
      resolve(n);
    });
    ws.on('message', (data) => {
      const text = Buffer.isBuffer(data) ? data.toString('utf8') : String(data);
      if (text.includes('"type":"resync"')) sendSnapshot(n);
    });
    ws.on('close', () => {
      n.ready = false;
    });
  });
}

const nodes: SimNode[] = [];
for (let i = 0; i < NODES; i++) nodes.push(await connect(i));
console.log(JSON.stringify({ event: 'snapshots-sent', nodes: nodes.length, records: NODES * ENTRIES }));
let sentBytes = 0;
setInterval(() => {
  for (const n of nodes) if (n.ready && n.ws.readyState === WebSocket.OPEN) sentBytes += tick(n);
  console.log(JSON.stringify({ event: 'tick', sentBytes, open: nodes.filter((n) => n.ws.readyState === WebSocket.OPEN).length }));
}, 1000);
process.on('SIGTERM', () => {
  for (const n of nodes) n.ws.terminate();
  process.exit(0);
});
