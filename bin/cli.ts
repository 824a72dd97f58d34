// `conntrail` command line: the one place where processes are wired together.
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { pino, type Logger } from 'pino';
import { renderStream, wantColor } from '../collector/api/log-render.ts';
import { isConntrailError } from '../contract/errors.ts';
import { isSourceName, sourceNames } from '../contract/sources.ts';

// Each command loads only its own modules: the agent runs on every node and
// should not carry the collector, the Kubernetes client or the bundle writer.
const agentModules = async () => ({
  ...(await import('../agent/agent.ts')),
  ...(await import('../agent/journal.ts')),
  ...(await import('../agent/facts.ts')),
  ...(await import('../agent/health.ts')),
  ...(await import('../agent/metrics.ts')),
  ...(await import('../agent/host-io.ts')),
  ...(await import('../agent/node-state.ts')),
  ...(await import('../agent/samplers.ts')),
});
const collectorModules = async () => ({
  ...(await import('../collector/incidents/bundle-service.ts')),
  ...(await import('../collector/pipeline.ts')),
  ...(await import('../collector/api/server.ts')),
  ...(await import('../collector/api/metrics.ts')),
  ...(await import('../collector/kube/cluster-view.ts')),
  ...(await import('../collector/kube/events.ts')),
  ...(await import('../collector/detection/finding-log.ts')),
  ...(await import('../collector/api/summary.ts')),
  ...(await import('../collector/receive/token-review.ts')),
  ...(await import('../collector/state/memory.ts')),
  ...(await import('../collector/store/store.ts')),
});

const VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const USAGE = `conntrail ${VERSION}: finds intermittent connection timeouts through Kubernetes Services and load balancers

usage:
  conntrail collector [--listen HOST:PORT|unix:PATH] [--token-file F] [--tls-cert F --tls-key F] [--capture 15s|off] [--history 15m]
                      [--kubeconfig F | --no-kubernetes] [--pretty [--color|--no-color]]
                      [--agent-auth token|tokenreview|both] [--agent-service-account NAMESPACE:NAME] [--data-dir DIR]
                      [--metrics-listen HOST:PORT] [--no-events]
  conntrail agent --collector ws://HOST:PORT [--node NAME] [--interval 1s] [--token-file F] [--ca F]
                  [--health-listen HOST:PORT] [--journal-max-age 15m] [--journal-max-bytes 64MiB]
  conntrail local [--interval 1s] [--listen HOST:PORT]   this node: agent, collector, detectors, incidents and the API in one process
  conntrail services [STEP_DIR] [--json]   the Services kube-proxy programmed on this node (or in saved outputs)
  conntrail parse SOURCE [FILE|-]     SOURCE: ${sourceNames.join(', ')}
  conntrail replay DIR [--kube KUBE_DIR]   recorded outputs (DIR/<node>/<time>/<file>) through the agent and the detectors,
                                      with the Kubernetes API as recorded in KUBE_DIR/<time>/<file>.json
  conntrail incidents --collector URL [--token-file F] [--ca F]
  conntrail bundle --collector URL (--incident ID | --since 10m) -o FILE [--token-file F] [--ca F]
  conntrail logs [FILE|-] [--color|--no-color]   renders the collector's JSON log for people (kubectl logs -f … | conntrail logs)
  conntrail doctor [--json] [--node NAME] [--gap 3s]   one-shot check of this node, no collector; exits 1 on an error

The token comes from --token-file or $CONNTRAIL_TOKEN. Logs are JSON lines on stdout.`;

class UsageError extends Error {}

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'collector':
        return await runCollector(rest);
      case 'agent':
        return await runAgent(rest);
      case 'local':
        return await runLocal(rest);
      case 'parse':
        return await runParse(rest);
      case 'replay':
        return await runReplay(rest);
      case 'doctor':
        return await runDoctorCommand(rest);
      case 'bundle':
        return await runBundle(rest);
      case 'incidents':
        return await runIncidents(rest);
      case 'logs':
        return await runLogs(rest);
      case 'services':
        return await runServices(rest);
      case undefined:
      case '-h':
      case '--help':
      case 'help':
        process.stdout.write(`${USAGE}\n`);
        return command === undefined ? 2 : 0;
      case '--version':
        process.stdout.write(`${VERSION}\n`);
        return 0;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      process.stderr.write(`conntrail: ${(err as Error).message}\n\n${USAGE}\n`);
      return 2;
    }
    // Network and TLS failures (ECONNREFUSED, an untrusted certificate …) are the user's to fix: say what, no stack.
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && /^(E[A-Z]+|[A-Z_]*CERT[A-Z_]*|UNABLE_TO_[A-Z_]+|DEPTH_ZERO_SELF_SIGNED_CERT)$/.test(code)) {
      const hint = /CERT|UNABLE_TO/.test(code) ? ' (pass the CA that signed the collector\'s certificate with --ca)' : '';
      process.stderr.write(`conntrail: ${command ?? ''}: ${(err as Error).message} [${code}]${hint}\n`);
      return 1;
    }
    throw err;
  }
}

export function parseInterval(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(text.trim());
  if (m === null) throw new UsageError(`--interval: ${JSON.stringify(text)} is not a duration like 1s or 500ms`);
  const ms = m[2] === 'ms' ? Number(m[1]) : Number(m[1]) * 1000;
  if (ms < 100) throw new UsageError('--interval: must be at least 100ms');
  return ms;
}

/** A listen flag read by `parse`, whose error names --listen: a usage error naming `flag` instead. */
function listenFlag<T>(flag: string, text: string, parse: (text: string) => T): T {
  try {
    return parse(text);
  } catch {
    throw new UsageError(`${flag}: ${JSON.stringify(text)} is not HOST:PORT or unix:PATH`);
  }
}

/** `HOST:PORT` (IPv6 in brackets) for the agent's health endpoints. */
function parseHostPort(text: string): { host: string; port: number } | null {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(text);
  const port = Number(m?.[3]);
  if (m === null || !Number.isInteger(port) || port > 65535) return null;
  return { host: m[1] ?? m[2] ?? '', port };
}

function readToken(tokenFile: string | undefined): string | null {
  if (tokenFile !== undefined) {
    const t = readFileSync(tokenFile, 'utf8').trim();
    if (t === '') throw new UsageError(`--token-file: ${tokenFile} is empty`);
    return t;
  }
  const env = process.env.CONNTRAIL_TOKEN?.trim();
  return env ? env : null;
}

function logger(component: string, level = process.env.LOG_LEVEL ?? 'info', pretty: { color: boolean } | null = null): Logger {
  const options = { level, base: { component }, timestamp: pino.stdTimeFunctions.isoTime };
  if (pretty === null) return pino(options);
  // --pretty renders in process, line by line, the same way `conntrail logs` does.
  const out = renderStream(pretty);
  out.pipe(process.stdout);
  return pino(options, out);
}

/** `conntrail logs [FILE|-]`: the collector's JSON log, rendered for people. */
async function runLogs(args: readonly string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: [...args], allowPositionals: true, allowNegative: true, options: { color: { type: 'boolean' } } });
  const [file = '-', ...extra] = positionals;
  if (extra.length > 0) throw new UsageError('logs: [FILE|-]');
  const input = file === '-' ? process.stdin : createReadStream(file);
  const color = wantColor(values.color, process.stdout);
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    // `conntrail logs | head`: the reader went away; that is the end, not a failure.
    if (err.code === 'EPIPE') process.exit(0);
    throw err;
  });
  try {
    await pipeline(input, renderStream({ color }), process.stdout);
  } catch (err) {
    process.stderr.write(`conntrail: logs: ${(err as Error).message}\n`);
    return 1;
  }
  return 0;
}

async function runCollector(args: readonly string[]): Promise<number> {
  const { parseSince, createPipeline, CollectorServer, parseListen, startClusterView, findingLogger, agentAuthFromFlags, DEFAULT_AGENT_SERVICE_ACCOUNT, defaultBudget, parseSize, Store, CollectorMetrics, startMetricsListener, startKubeEvents } = await collectorModules();
  const { values } = parseArgs({
    args: [...args],
    options: { listen: { type: 'string', default: '0.0.0.0:7470' }, 'token-file': { type: 'string' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' }, capture: { type: 'string', default: '15s' }, history: { type: 'string', default: '15m' }, 'memory-budget': { type: 'string' }, 'data-dir': { type: 'string' }, kubeconfig: { type: 'string' }, 'no-kubernetes': { type: 'boolean', default: false }, kubernetes: { type: 'boolean', default: true }, pretty: { type: 'boolean', default: false }, color: { type: 'boolean' }, 'agent-auth': { type: 'string' }, 'agent-service-account': { type: 'string', default: DEFAULT_AGENT_SERVICE_ACCOUNT }, 'metrics-listen': { type: 'string' }, events: { type: 'boolean', default: true } },
    allowNegative: true,
  });
  const metricsListen = values['metrics-listen'] === undefined ? null : listenFlag('--metrics-listen', values['metrics-listen'], parseListen);
  const log = logger('collector', undefined, values.pretty ? { color: wantColor(values.color, process.stdout) } : null);
  // With allowNegative, parseArgs reads `--no-kubernetes` as `kubernetes: false`, not as the option of that name.
  const noKubernetes = values['no-kubernetes'] || !values.kubernetes;
  const agentAuth = await agentAuthFromFlags({ mode: values['agent-auth'], serviceAccount: values['agent-service-account'], noKubernetes, log, ...(values.kubeconfig === undefined ? {} : { kubeconfig: values.kubeconfig }) });
  if (!agentAuth.ok) throw new UsageError(agentAuth.error);
  const captureMs = values.capture === '0' || values.capture === 'off' ? 0 : parseInterval(values.capture);
  const token = readToken(values['token-file']);
  const tls = values['tls-cert'] && values['tls-key'] ? { cert: readFileSync(values['tls-cert'], 'utf8'), key: readFileSync(values['tls-key'], 'utf8') } : undefined;
  const historyMs = parseSince(values.history);
  if (historyMs === null) throw new UsageError(`--history: ${JSON.stringify(values.history)} is not a duration like 15m`);
  const memoryBudget = values['memory-budget'] === undefined ? defaultBudget() : parseSize(values['memory-budget']);
  if (memoryBudget === null) throw new UsageError(`--memory-budget: ${JSON.stringify(values['memory-budget'])} is not a size like 900Mi or 2Gi`);
  const dataDir = values['data-dir'];
  if (dataDir === undefined) log.info('no --data-dir: timelines, incidents and findings are kept in memory only, and a restart loses them');
  const store = dataDir === undefined ? null : Store.open(dataDir, log, { windowMs: historyMs });
  const cluster = await startClusterView({ log, historyMs, disabled: noKubernetes, ...(values.kubeconfig === undefined ? {} : { kubeconfig: values.kubeconfig }) });
  const logFinding = findingLogger(log);
  let metrics: InstanceType<typeof CollectorMetrics> | undefined;
  let events: Awaited<ReturnType<typeof startKubeEvents>> = null;
  const pipeline = createPipeline({
    log,
    historyMs,
    memoryBudget,
    store,
    catalog: cluster.catalog,
    version: VERSION,
    captureMs,
    onFinding: (line) => {
      logFinding(line);
      metrics?.finding(line);
      events?.finding(line);
    },
    onIncident: (incident, line, capturing) => log.warn({ incident: incident.id, service: incident.service, node: line.node, capturing, captureMs }, 'incident opened'),
  });
  // --no-events arrives as `events: false` (allowNegative).
  events = await startKubeEvents({ log, disabled: !values.events, kube: cluster.catalog, bounds: pipeline.collector.bounds, ...(values.kubeconfig === undefined ? {} : { kubeconfig: values.kubeconfig }) });
  metrics = new CollectorMetrics({ collector: pipeline.collector, incidents: () => pipeline.bundles.incidents.list() });
  const server = new CollectorServer({ collector: pipeline.collector, log, token, bundles: pipeline.bundles, services: pipeline.services, metrics, agentAuth: agentAuth.mode, reviewer: agentAuth.reviewer, ...(tls ? { tls } : {}) });
  const addr = await server.listen(parseListen(values.listen));
  log.info({ listen: addr, auth: token === null ? 'none' : 'bearer token', agentAuth: agentAuth.mode, tls: tls !== undefined }, 'collector listening');
  if (token === null) log.warn(agentAuth.mode === 'token' ? 'no token configured: any agent or client can connect (set CONNTRAIL_TOKEN or --token-file)' : 'no token configured: anyone who can reach the HTTP API can read it (set CONNTRAIL_TOKEN or --token-file); agents still need a reviewed ServiceAccount token');
  const metricsServer = metricsListen === null ? null : await startMetricsListener(metrics, metricsListen);
  if (metricsServer !== null) log.info({ listen: metricsServer.address }, 'metrics listening (GET /metrics, no token)');
  await untilSignal();
  pipeline.flush(Date.now());
  await events?.stop();
  await cluster.stop();
  await metricsServer?.close();
  await server.close();
  pipeline.store?.close();
  return 0;
}

async function runAgent(args: readonly string[]): Promise<number> {
  const { Agent, readNodeFacts, startHealthServer, createHostIO, NodeState, createSamplers, parseBytes, parseJournalAge, DEFAULT_JOURNAL, AgentMetrics } = await agentModules();
  const { values } = parseArgs({
    args: [...args],
    options: { collector: { type: 'string' }, node: { type: 'string' }, interval: { type: 'string', default: '1s' }, 'token-file': { type: 'string' }, ca: { type: 'string' }, 'health-listen': { type: 'string' }, 'journal-max-age': { type: 'string' }, 'journal-max-bytes': { type: 'string' } },
  });
  const journalAge = values['journal-max-age'] === undefined ? DEFAULT_JOURNAL.maxAgeMs : parseJournalAge(values['journal-max-age']);
  if (journalAge === null) throw new UsageError(`--journal-max-age: ${JSON.stringify(values['journal-max-age'])} is not a duration like 15m (or off)`);
  const journalBytes = values['journal-max-bytes'] === undefined ? DEFAULT_JOURNAL.maxBytes : parseBytes(values['journal-max-bytes']);
  if (journalBytes === null) throw new UsageError(`--journal-max-bytes: ${JSON.stringify(values['journal-max-bytes'])} is not a size like 64MiB (or off)`);
  if (values.collector === undefined) throw new UsageError('agent: --collector ws://HOST:PORT is required');
  const healthListen = values['health-listen'] === undefined ? null : parseHostPort(values['health-listen']);
  if (healthListen === null && values['health-listen'] !== undefined) throw new UsageError(`--health-listen: ${JSON.stringify(values['health-listen'])} is not HOST:PORT`);
  const node = values.node ?? process.env.NODE_NAME ?? hostname();
  const log = logger('agent').child({ node });
  const tokenFile = values['token-file'];
  const firstToken = readToken(tokenFile);
  const state = new NodeState(createSamplers(), createHostIO());
  // Read from the agent only when scraped, which the health server (started after the agent) allows.
  const metrics = new AgentMetrics({ statuses: () => state.statuses(), skippedTicks: (): number => agent.skippedTicks, connected: (): boolean => agent.health().connected });
  state.onSampled((source, ms) => metrics.sampled(source, ms));
  const agent = new Agent({
    node,
    collectorUrl: values.collector,
    intervalMs: parseInterval(values.interval),
    // Read now so a missing file stops the agent at start, then again at every (re)connect: projected tokens rotate.
    token: tokenFile === undefined ? firstToken : () => readToken(tokenFile),
    version: VERSION,
    state,
    log,
    readFacts: readNodeFacts,
    ...(values.ca ? { ca: readFileSync(values.ca, 'utf8') } : {}),
    journal: { maxAgeMs: journalAge, maxBytes: journalBytes },
    metrics,
  });
  log.info({ collector: values.collector, intervalMs: parseInterval(values.interval), journal: journalAge > 0 && journalBytes > 0 ? { maxAgeMs: journalAge, maxBytes: journalBytes } : 'off' }, 'agent starting');
  agent.start();
  const health = healthListen === null ? null : await startHealthServer(() => agent.health(), healthListen, { metrics });
  if (health !== null) log.info({ health: health.address }, 'health endpoints listening (/livez, /readyz, /metrics)');
  await untilSignal();
  await health?.close();
  await agent.stop();
  return 0;
}

/**
 * The embedded default: this host's agent feeding the collector's whole
 * pipeline in one process (detectors, incidents, bundles, the API on a port
 * it prints), live counts redrawn every tick, and each finding rendered as
 * `conntrail logs` renders it.
 */
async function runLocal(args: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { interval: { type: 'string', default: '1s' }, listen: { type: 'string', default: '127.0.0.1:0' } } });
  // Flags first: nothing is opened for a command line that is wrong.
  const intervalMs = parseInterval(values.interval);
  const { Agent, readNodeFacts, createHostIO, NodeState, createSamplers } = await agentModules();
  const { createPipeline, CollectorServer, parseListen, renderSummary, findingLogger } = await collectorModules();
  const { renderLogLine } = await import('../collector/api/log-render.ts');
  // pino's child() would repeat the `component` key, not replace it: one logger per component.
  const level = process.env.LOG_LEVEL ?? 'warn';
  const tty = process.stdout.isTTY === true;
  const color = wantColor(undefined, process.stdout);
  // This is a person's screen: the collector's and the agent's own lines are rendered as `conntrail logs` renders them too.
  const log = logger('collector', level, { color });
  // Findings go through the same pino line the collector writes, then through the logs renderer.
  const rendered: string[] = [];
  // A finding is drawn as soon as it is made, not at the next tick's redraw.
  let drawSoon: NodeJS.Immediate | null = null;
  const findingsOut = pino({ base: { component: 'collector' }, timestamp: pino.stdTimeFunctions.isoTime }, {
    write(line: string) {
      const text = renderLogLine(line.replace(/\n$/, ''), { color });
      if (tty) {
        rendered.push(text);
        if (rendered.length > 20) rendered.shift();
        drawSoon ??= setImmediate(() => {
          drawSoon = null;
          draw();
        });
      } else process.stdout.write(`${text}\n`);
    },
  });
  const pipeline = createPipeline({ log, version: VERSION, onFinding: findingLogger(findingsOut) });
  const token = readToken(undefined);
  const server = new CollectorServer({ collector: pipeline.collector, log, token, bundles: pipeline.bundles, services: pipeline.services });
  const addr = await server.listen(parseListen(values.listen));
  const host = typeof addr === 'string' ? null : addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  const url = typeof addr === 'string' ? `ws+unix:${addr}` : `ws://${host ?? ''}:${addr.port}`;
  const api = typeof addr === 'string' ? `unix:${addr}` : `http://${host ?? ''}:${addr.port}`;
  const node = process.env.NODE_NAME ?? hostname();
  const agent = new Agent({
    node,
    collectorUrl: url,
    intervalMs,
    token,
    version: VERSION,
    state: new NodeState(createSamplers(), createHostIO()),
    log: logger('agent', level, { color }).child({ node }),
    readFacts: readNodeFacts,
  });
  agent.start();
  const header = [
    `conntrail local on ${node}: watching this node every ${intervalMs} ms. Ctrl-C to quit.`,
    `API ${api}  (conntrail incidents --collector ${api}; conntrail bundle --collector ${api} --since 10m -o FILE)`,
  ];
  if (!tty) process.stdout.write(`${header.join('\n')}\n`);
  const notes = (): string[] => {
    const view = pipeline.collector.nodes.get(node);
    if (view === undefined || view.lastSeq === null) return [];
    const out: string[] = [];
    if (pipeline.detection.services(node).length === 0)
      out.push('nothing to watch yet: no kube-proxy rules found on this node (iptables, nftables, IPVS and ipsets hold no Services); findings need a node kube-proxy programs');
    const ipvs = view.status('ipvs');
    if (ipvs !== undefined && ipvs.state !== 'ok') out.push(`IPVS absent: ${ipvs.reason ?? ipvs.state}`);
    return out;
  };
  const incidents = (): string[] => pipeline.bundles.list().map((i) => `incident ${String(i.id)}  ${String(i.service ?? '-')}  ${String(i.findings)} findings  ${JSON.stringify(i.kinds)}`);
  let lastNotes = '';
  const draw = () => {
    const now = Date.now();
    if (tty) {
      const screen = [...header, '', renderSummary(pipeline.collector, now), ...notes(), ...incidents(), '', ...(rendered.length > 0 ? ['findings (latest last):', ...rendered] : ['no findings'])];
      process.stdout.write(`\x1b[H\x1b[2J${screen.join('\n')}\n`);
    } else {
      const n = notes().join('\n');
      if (n !== lastNotes && n !== '') process.stdout.write(`${n}\n`);
      lastNotes = n;
    }
  };
  const timer = setInterval(draw, intervalMs);
  // Without a terminal there is no screen to redraw: the counts go out every 5 s.
  const summaryTimer = tty ? null : setInterval(() => process.stdout.write(`${renderSummary(pipeline.collector, Date.now())}\n${incidents().join('\n')}\n`), 5_000);
  await untilSignal();
  clearInterval(timer);
  if (summaryTimer !== null) clearInterval(summaryTimer);
  if (drawSoon !== null) clearImmediate(drawSoon);
  pipeline.flush(Date.now());
  await agent.stop();
  await server.close();
  // Under `npm start` the shell reports ^C as its own exit status; this line says conntrail itself shut down cleanly.
  process.stdout.write(`conntrail local stopped: agent and API ${api} closed\n`);
  return 0;
}

/** `conntrail services [STEP_DIR] [--json]`. */
async function runServices(args: readonly string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: [...args], allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
  const [dir, ...extra] = positionals;
  if (extra.length > 0) throw new UsageError('services: [STEP_DIR] [--json]');
  const { readServices, recordedStepIO, liveIO, renderServices, servicesJson } = await import('./services.ts');
  try {
    const read = await readServices(dir === undefined ? liveIO() : recordedStepIO(dir));
    process.stdout.write(values.json ? servicesJson(read) : renderServices(read));
    if (values.json) for (const u of read.unavailable) process.stderr.write(`conntrail: services: ${u.source} not read: ${u.reason}\n`);
    return 0;
  } catch (err) {
    if (isConntrailError(err, 'BAD_INPUT')) {
      process.stderr.write(`conntrail: services: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

async function runParse(args: readonly string[]): Promise<number> {
  const [source, file = '-', ...extra] = args;
  if (source === undefined || extra.length > 0) throw new UsageError('parse: SOURCE [FILE|-]');
  if (!isSourceName(source)) throw new UsageError(`parse: unknown source ${JSON.stringify(source)} (one of ${sourceNames.join(', ')})`);
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    process.stderr.write(`conntrail: parse: cannot read ${file === '-' ? 'standard input' : file}: ${(err as Error).message}\n`);
    return 1;
  }
  const { parsers } = await import('../agent/parsers.ts');
  const { records, problems } = parsers[source](text);
  const out: string[] = records.map((r) => JSON.stringify(r));
  process.stdout.write(out.length > 0 ? `${out.join('\n')}\n` : '');
  for (const p of problems) process.stderr.write(`${JSON.stringify(p)}\n`);
  return 0;
}

async function runReplay(args: readonly string[]): Promise<number> {
  const { positionals, values } = parseArgs({ args: [...args], allowPositionals: true, options: { kube: { type: 'string' } } });
  const [dir, ...extra] = positionals;
  if (dir === undefined || extra.length > 0) throw new UsageError('replay: DIR [--kube KUBE_DIR]');
  // The collector's own chatter (agent connected, snapshot applied) is noise here; findings are the output.
  const log = logger('collector', process.env.LOG_LEVEL ?? 'warn');
  try {
    const { replay } = await import('./replay.ts');
    const { findingLogger } = await import('../collector/detection/finding-log.ts');
    const lines = await replay(dir, log, findingLogger(log), values.kube === undefined ? {} : { kube: values.kube });
    return lines.some((l) => l.severity === 'error') ? 1 : 0;
  } catch (err) {
    if (isConntrailError(err, 'BAD_INPUT')) {
      process.stderr.write(`conntrail: replay: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
}

async function runDoctorCommand(args: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { json: { type: 'boolean', default: false }, node: { type: 'string' }, gap: { type: 'string', default: '3s' } } });
  const { renderDoctor, runDoctor } = await import('./doctor.ts');
  const report = await runDoctor({ ...(values.node ? { node: values.node } : {}), gapMs: parseInterval(values.gap), log: logger('doctor', process.env.LOG_LEVEL ?? 'silent') });
  process.stdout.write(values.json ? `${JSON.stringify(report)}\n` : `${renderDoctor(report)}\n`);
  return report.ok ? 0 : 1;
}

/** `http://host:port` (or `unix:/path` for a collector on a unix socket). */
/** `ca`: a PEM bundle to trust for an https:// collector (its own CA), beside the system's. */
function httpGet(base: string, path: string, token: string | null, ca?: string): Promise<import('node:http').IncomingMessage> {
  return new Promise((resolve, reject) => {
    const headers = token === null ? {} : { authorization: `Bearer ${token}` };
    const req = base.startsWith('unix:')
      ? httpRequest({ socketPath: base.slice(5), path, headers })
      : base.startsWith('https:')
        ? httpsRequest(new URL(path, base), { headers, ...(ca === undefined ? {} : { ca }) })
        : httpRequest(new URL(path, base), { headers });
    req.on('response', resolve);
    req.on('error', reject);
    req.end();
  });
}

async function runIncidents(args: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { collector: { type: 'string' }, 'token-file': { type: 'string' }, json: { type: 'boolean', default: false }, ca: { type: 'string' } } });
  if (values.collector === undefined) throw new UsageError('incidents: --collector URL is required');
  const res = await httpGet(values.collector, '/api/incidents', readToken(values['token-file']), values.ca === undefined ? undefined : readFileSync(values.ca, 'utf8'));
  const body = await new Promise<string>((r) => { let b = ''; res.on('data', (d: Buffer) => (b += d.toString())); res.on('end', () => r(b)); });
  if (res.statusCode !== 200) {
    process.stderr.write(`conntrail: incidents: the collector answered ${res.statusCode}: ${body}\n`);
    return 1;
  }
  const list = JSON.parse(body) as { id: string; service: string | null; nodes: string[]; findings: number; kinds: string[]; firstFinding: string }[];
  if (values.json) process.stdout.write(`${body}\n`);
  else if (list.length === 0) process.stdout.write('no incidents\n');
  else for (const i of list) process.stdout.write(`${i.id}  ${i.firstFinding}  ${i.service ?? '-'}  nodes ${i.nodes.join(',')}  ${i.findings} findings (${i.kinds.join(', ')})\n`);
  return 0;
}

async function runBundle(args: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { collector: { type: 'string' }, incident: { type: 'string' }, since: { type: 'string' }, output: { type: 'string', short: 'o' }, 'token-file': { type: 'string' }, ca: { type: 'string' } } });
  if (values.collector === undefined || values.output === undefined || (values.incident === undefined) === (values.since === undefined))
    throw new UsageError('bundle: --collector URL (--incident ID | --since 10m) -o FILE');
  const path = values.incident !== undefined ? `/api/incidents/${encodeURIComponent(values.incident)}/bundle` : `/api/bundle?since=${encodeURIComponent(values.since ?? '')}`;
  const res = await httpGet(values.collector, path, readToken(values['token-file']), values.ca === undefined ? undefined : readFileSync(values.ca, 'utf8'));
  if (res.statusCode !== 200) {
    let b = '';
    for await (const d of res) b += String(d);
    process.stderr.write(`conntrail: bundle: the collector answered ${res.statusCode}: ${b}\n`);
    return 1;
  }
  const total = Number(res.headers['content-length'] ?? 0);
  const out = createWriteStream(values.output);
  let got = 0;
  const bar = (done: boolean) => {
    if (!process.stderr.isTTY && !done) return;
    const width = 30;
    const frac = total > 0 ? Math.min(1, got / total) : done ? 1 : 0;
    process.stderr.write(`\r[${'#'.repeat(Math.round(frac * width)).padEnd(width, '.')}] ${(got / 1024).toFixed(0)} KiB${total ? ` of ${(total / 1024).toFixed(0)} KiB` : ''}${done ? '\n' : ''}`);
  };
  for await (const chunk of res) {
    got += (chunk as Buffer).length;
    out.write(chunk);
    bar(false);
  }
  await new Promise<void>((r, j) => out.end((err?: Error | null) => (err ? j(err) : r())));
  bar(true);
  process.stderr.write(`wrote ${values.output}\n`);
  return 0;
}

function untilSignal(): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve();
    };
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
}
