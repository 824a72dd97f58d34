// `conntrail` command line: the one place where processes are wired together.
import { accessSync, constants as fsConstants, createReadStream, createWriteStream, fstatSync, openSync, readFileSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { getHeapStatistics } from 'node:v8';
import { pino, type Logger } from 'pino';
import { renderStream, wantColor } from '../collector/api/log-render.ts';
import { isConntrailError } from '../contract/errors.ts';
import { isSourceName, sourceNames } from '../contract/sources.ts';
import { DURATION_HINT, parseDuration } from '../contract/duration.ts';

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

// bin/cli.ts in a checkout, dist/bin/cli.js in the packed package: package.json is one or two levels up.
const VERSION: string = ((): string => {
  for (const up of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(up, import.meta.url), 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === 'conntrail' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // not this level
    }
  }
  return 'unknown';
})();

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
  conntrail findings --collector URL [--since 15m] [--json] [--token-file F] [--ca F]   the findings of the last --since, restarts included
  conntrail bundle --collector URL (--incident ID | --since 10m) -o FILE [--token-file F] [--ca F]
  conntrail logs [FILE|-] [--color|--no-color]   renders the collector's JSON log for people (kubectl logs -f … | conntrail logs)
  conntrail doctor [--json] [--node NAME] [--gap 3s]   one-shot check of this node, no collector; exits 1 on an error

The token comes from --token-file or $CONNTRAIL_TOKEN. Logs are JSON lines on stdout.
\`conntrail COMMAND --help\` says more about one command.`;

const EXIT_STATUS = 'exit status: 0 done, 1 an error finding was reported (replay, doctor), 2 the command line is wrong, 3 it failed';

/** What `conntrail COMMAND --help` adds to the command's synopsis from USAGE. */
const DETAILS: Readonly<Record<string, string>> = {
  collector: `receives the agents' streams, runs the detectors, logs each finding as a JSON line on stdout, opens incidents and serves the API.
  --listen HOST:PORT|unix:PATH   agents and API clients connect here (default 0.0.0.0:7470)
  --token-file F                 the bearer token agents and clients present (or $CONNTRAIL_TOKEN)
  --tls-cert F --tls-key F       serve https:// and wss:// with this certificate and key
  --capture 15s|off              how long agents capture packets when an incident opens
  --history 15m                  how long each node's timeline is kept
  --memory-budget 900Mi          memory the timelines may use (default: from the cgroup limit)
  --data-dir DIR                 keep timelines, incidents and findings in DIR/conntrail.db across restarts
  --kubeconfig F | --no-kubernetes   the Kubernetes API (default: in-cluster, $KUBECONFIG, ~/.kube/config), or none
  --agent-auth token|tokenreview|both   how agents prove their node (default: tokenreview in a cluster, else token)
  --agent-service-account NS:NAME       the agents' ServiceAccount, for tokenreview
  --metrics-listen HOST:PORT     a second listener for GET /metrics, without the token
  --no-events                    post no Kubernetes Events for findings
  --pretty [--color|--no-color]  render the log for people, as conntrail logs does`,
  agent: `samples this node every --interval and streams what changed to the collector (the DaemonSet's command).
  --collector ws://HOST:PORT   the collector: wss:// with TLS, ws+unix:PATH on a socket (required)
  --node NAME                  this node's name (default: $NODE_NAME, then the hostname)
  --interval 1s                time between samples, at least 100ms
  --token-file F               the token, read again at every reconnect (or $CONNTRAIL_TOKEN)
  --ca F                       trust this CA (PEM) for a wss:// collector
  --health-listen HOST:PORT    serve /livez, /readyz and /metrics
  --journal-max-age 15m|off    how far back the diffs kept for a reconnect reach
  --journal-max-bytes 64MiB|off   and how much memory they may take`,
  local: `this node's agent, collector, detectors, incidents and API in one process, live counts on the terminal.
  --interval 1s        time between samples, at least 100ms
  --listen HOST:PORT   the API (default 127.0.0.1:0: a free port, printed)`,
  services: `the Services kube-proxy programmed on this node, read now, or from STEP_DIR of saved outputs.
  --json   one JSON document instead of a table`,
  parse: `parses one source's output (FILE, or standard input) into records: one JSON line each on stdout, and the lines it could not read as problems on stderr.`,
  replay: `runs recorded outputs (or a bundle) through the agent and the detectors, and prints the findings as the collector logs them.
  --kube KUBE_DIR   the Kubernetes API as recorded (kubectl get services,endpointslices -A -o json, by time)`,
  incidents: `lists the collector's incidents.
  --collector URL   http://HOST:PORT, https://HOST:PORT or unix:PATH (required)
  --token-file F    the API token (or $CONNTRAIL_TOKEN)
  --ca F            trust this CA (PEM) for an https:// collector
  --json            the collector's JSON as it answered`,
  findings: `prints the findings the collector logged in the last --since, as the log rendered them (conntrail logs): from its store, so a restart does not lose them.
  --collector URL   http://HOST:PORT, https://HOST:PORT or unix:PATH (required)
  --since 15m       how far back (at most the collector's --history)
  --json            the collector's log lines as it answered (NDJSON, for jq)
  --color | --no-color   default: colour on a terminal, unless $NO_COLOR is set
  --token-file F    the API token (or $CONNTRAIL_TOKEN)
  --ca F            trust this CA (PEM) for an https:// collector`,
  bundle: `downloads an incident's bundle, or the last --since of every node, as a .tar.gz with report.html inside.
  --collector URL   http://HOST:PORT, https://HOST:PORT or unix:PATH (required)
  --incident ID | --since 10m   which incident, or how far back
  -o, --output FILE the file to write
  --token-file F    the API token (or $CONNTRAIL_TOKEN)
  --ca F            trust this CA (PEM) for an https:// collector`,
  logs: `renders the collector's JSON log lines (FILE, or standard input) for people; other lines pass through.
  --color | --no-color   default: colour on a terminal, unless $NO_COLOR is set`,
  doctor: `a one-shot check of this node without a collector: samples through the real agent path for --gap, runs every detector and the configuration checks.
  --json        the report as one JSON document
  --node NAME   the node's name in the report (default: $NODE_NAME, then the hostname)
  --gap 3s      how long to sample`,
};

/** The command's lines of USAGE (its synopsis and their continuation lines), then DETAILS. */
function commandHelp(command: string): string {
  const lines = USAGE.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`  conntrail ${command} `) || l === `  conntrail ${command}`);
  const synopsis: string[] = [];
  for (let i = start; i >= 0 && i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (i > start && (line.trim() === '' || line.startsWith('  conntrail ') || !line.startsWith('   '))) break;
    synopsis.push(line.slice(2));
  }
  const details = DETAILS[command] ?? '';
  const durations = /--(interval|capture|history|gap|since|journal-max-age)\b/.test(details) ? `durations: ${DURATION_HINT.replace(/^a duration like /, '')}\n` : '';
  return `usage: ${synopsis.join('\n       ')}\n\nconntrail ${command} ${details}\n\n${durations}${EXIT_STATUS}\n`;
}

/** The command line is wrong: exit 2. The message names the flag or path. */
class UsageError extends Error {}
/** The command line is right but the work failed (a collector that cannot be reached, an output that cannot be written): exit 3. */
class FailureError extends Error {}

// These need what only Node 24 has (node:sqlite without a flag, among others); the client commands run on Node 22 too.
const NODE_SIDE = new Set(['agent', 'collector', 'local', 'doctor']);
const NODE_SIDE_MAJOR = 24;

/** parseArgs's messages go on with advice about `--`; the first sentence names the flag. */
function parseArgsMessage(message: string): string {
  // `--history -5m`: parseArgs will not take a value that starts with a dash from the next word.
  const ambiguous = /^Option '(?:-\w, )?(-{1,2}[\w-]+)(?: <value>)?' argument is ambiguous/.exec(message);
  const long = /use '(--[\w-]+)=-XYZ'/.exec(message)?.[1] ?? ambiguous?.[1];
  if (ambiguous !== null) return `${ambiguous[1] ?? ''} needs a value, and takes one that starts with - only as ${long ?? ''}=VALUE`;
  const missing = /^Option '(?:-\w, )?(-{1,2}[\w-]+) <value>' argument missing/.exec(message);
  if (missing !== null) return `${missing[1] ?? ''} needs a value`;
  const first = /^.*?[.](?=\s|$)/.exec(message)?.[0] ?? message;
  return first.replace(/[.]$/, '');
}

export async function main(argv: readonly string[]): Promise<number> {
  const [command, ...rest] = argv;
  const known = command !== undefined && Object.hasOwn(DETAILS, command);
  // `--help` anywhere before a `--`: what a person types when a command line went wrong.
  const beforeDashes = rest.indexOf('--') < 0 ? rest : rest.slice(0, rest.indexOf('--'));
  if (known && (beforeDashes.includes('--help') || beforeDashes.includes('-h'))) {
    process.stdout.write(commandHelp(command));
    return 0;
  }
  const major = Number(process.versions.node.split('.')[0]);
  if (known && NODE_SIDE.has(command) && major < NODE_SIDE_MAJOR) {
    process.stderr.write(`conntrail: ${command} needs Node.js ${NODE_SIDE_MAJOR} or newer (this is ${process.version}); logs, parse, replay, services, incidents, findings and bundle run on Node.js 22 as well\n`);
    return 2;
  }
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
      case 'findings':
        return await runFindings(rest);
      case 'logs':
        return await runLogs(rest);
      case 'services':
        return await runServices(rest);
      case undefined:
        process.stderr.write(`${USAGE}\n`);
        return 2;
      case '-h':
      case '--help':
      case 'help':
        // `conntrail help parse` as `conntrail parse --help`.
        process.stdout.write(rest[0] !== undefined && Object.hasOwn(DETAILS, rest[0]) ? commandHelp(rest[0]) : `${USAGE}\n`);
        return 0;
      case '--version':
        process.stdout.write(`${VERSION}\n`);
        return 0;
      default:
        process.stderr.write(`conntrail: unknown command ${JSON.stringify(command)}; see conntrail --help\n`);
        return 2;
    }
  } catch (err) {
    // One line each, never a stack: these are the user's to fix, and the line says what and where.
    const code = (err as { code?: unknown }).code;
    if (err instanceof UsageError || (typeof code === 'string' && code.startsWith('ERR_PARSE_ARGS'))) {
      const message = err instanceof UsageError ? err.message : parseArgsMessage((err as Error).message);
      process.stderr.write(`conntrail: ${command}: ${message}; see conntrail ${command} --help\n`);
      return 2;
    }
    if (err instanceof FailureError) {
      process.stderr.write(`conntrail: ${command}: ${err.message}\n`);
      return 3;
    }
    // Network and TLS failures (ECONNREFUSED, an untrusted certificate …) and a file that went away mid-way.
    if (typeof code === 'string' && /^(E[A-Z]+|[A-Z_]*CERT[A-Z_]*|UNABLE_TO_[A-Z_]+|DEPTH_ZERO_SELF_SIGNED_CERT)$/.test(code)) {
      const hint = /CERT|UNABLE_TO/.test(code) ? ' (pass the CA that signed the collector\'s certificate with --ca)' : '';
      process.stderr.write(`conntrail: ${command}: ${(err as Error).message} [${code}]${hint}\n`);
      return 3;
    }
    throw err;
  }
}

/**
 * Every duration flag, through the one parser `?since=` uses too. `off`
 * (and `0`) where the flag can be turned off, which reads as 0.
 */
function durationFlag(flag: string, text: string, o: { readonly minMs?: number; readonly off?: boolean } = {}): number {
  if (o.off === true && (text.trim() === 'off' || text.trim() === '0')) return 0;
  const ms = parseDuration(text);
  if (ms === null) throw new UsageError(`${flag}: ${JSON.stringify(text)} is not ${DURATION_HINT}${o.off === true ? ', or off' : ''}`);
  if (o.minMs !== undefined && ms < o.minMs) throw new UsageError(`${flag}: ${JSON.stringify(text)} is shorter than the least it takes, ${o.minMs}ms`);
  return ms;
}

/** A file a flag names, read now: one that is missing or unreadable is the command line's mistake. */
function readFlagFile(flag: string, path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw new UsageError(`${flag}: cannot read ${path}: ${fsReason(err)}`);
  }
}

/**
 * `ENOENT: no such file or directory, open '/x'` → `no such file or directory`,
 * `listen EADDRINUSE: address already in use 127.0.0.1:7470` → `address already in use`:
 * the caller names the path or address once.
 */
function fsReason(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const m = /^(?:[a-z]+ )?E[A-Z]+: (.+?)(?:,? [a-z]+ '[^']*'| \S+:\d+)?$/.exec(message);
  return m?.[1] ?? message;
}

/** An output file: fail before the work (a bundle the collector builds) when it can never be written. */
function checkWritable(flag: string, path: string): void {
  let isDir = false;
  try {
    isDir = statSync(path).isDirectory();
  } catch {
    // does not exist yet: its directory must let us create it
  }
  if (isDir) throw new FailureError(`${flag}: cannot write ${path}: it is a directory`);
  try {
    accessSync(dirname(path), fsConstants.W_OK);
  } catch (err) {
    throw new FailureError(`${flag}: cannot write ${path}: ${fsReason(err)}`);
  }
}

/** `work` touches `path` (a directory to create, a file to open): an error of the system's names the flag and the path. */
function atPath<T>(flag: string, path: string, work: () => T): T {
  try {
    return work();
  } catch (err) {
    if (typeof (err as { code?: unknown }).code === 'string' && (err as { syscall?: unknown }).syscall !== undefined) throw new FailureError(`${flag}: cannot use ${path}: ${fsReason(err)}`);
    throw err;
  }
}

/** A listener that cannot open (the port is taken, the address is not this host's) names its flag. */
async function listenOn<T>(flag: string, text: string, open: () => Promise<T>): Promise<T> {
  try {
    return await open();
  } catch (err) {
    if (typeof (err as { code?: unknown }).code === 'string') throw new FailureError(`${flag}: cannot listen on ${text}: ${fsReason(err)}`);
    throw err;
  }
}

/** A collector URL for the API clients (incidents, bundle). */
function apiUrlFlag(text: string | undefined): string {
  if (text === undefined) throw new UsageError('--collector URL is required');
  if (text.startsWith('unix:') && text.length > 5) return text;
  if (URL.canParse(text) && /^https?:$/.test(new URL(text).protocol)) return text;
  throw new UsageError(`--collector: ${JSON.stringify(text)} is not http://HOST:PORT, https://HOST:PORT or unix:PATH`);
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
    const t = readFlagFile('--token-file', tokenFile).trim();
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

/** A FILE argument opened now, so that a wrong path is a usage error naming it before anything is printed. */
function openInput(file: string): NodeJS.ReadableStream {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${fsReason(err)}`);
  }
  if (fstatSync(fd).isDirectory()) throw new UsageError(`cannot read ${file}: it is a directory`);
  return createReadStream(file, { fd });
}

/** `conntrail logs [FILE|-]`: the collector's JSON log, rendered for people. */
async function runLogs(args: readonly string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: [...args], allowPositionals: true, allowNegative: true, options: { color: { type: 'boolean' } } });
  const [file = '-', ...extra] = positionals;
  if (extra.length > 0) throw new UsageError(`takes one FILE (or - for standard input), not ${extra.length + 1}`);
  const input = file === '-' ? process.stdin : openInput(file);
  const color = wantColor(values.color, process.stdout);
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    // `conntrail logs | head`: the reader went away; that is the end, not a failure.
    if (err.code === 'EPIPE') process.exit(0);
    // Anything else ends the pipeline below, which says so.
  });
  try {
    await pipeline(input, renderStream({ color }), process.stdout);
  } catch (err) {
    throw new FailureError(`cannot read ${file === '-' ? 'standard input' : file}: ${fsReason(err)}`);
  }
  return 0;
}

/** The old-space cap that keeps V8's whole heap limit within four fifths of a memory budget. */
export function suggestedOldSpaceMb(budget: number): number {
  return Math.max(96, Math.floor((budget * 0.8) / 2 ** 20) - 192);
}

async function runCollector(args: readonly string[]): Promise<number> {
  const { createPipeline, CollectorServer, parseListen, startClusterView, findingLogger, agentAuthFromFlags, DEFAULT_AGENT_SERVICE_ACCOUNT, defaultBudget, parseSize, Store, CollectorMetrics, startMetricsListener, startKubeEvents } = await collectorModules();
  const { values } = parseArgs({
    args: [...args],
    options: { listen: { type: 'string', default: '0.0.0.0:7470' }, 'token-file': { type: 'string' }, 'tls-cert': { type: 'string' }, 'tls-key': { type: 'string' }, capture: { type: 'string', default: '15s' }, history: { type: 'string', default: '15m' }, 'memory-budget': { type: 'string' }, 'data-dir': { type: 'string' }, kubeconfig: { type: 'string' }, 'no-kubernetes': { type: 'boolean', default: false }, kubernetes: { type: 'boolean', default: true }, pretty: { type: 'boolean', default: false }, color: { type: 'boolean' }, 'agent-auth': { type: 'string' }, 'agent-service-account': { type: 'string', default: DEFAULT_AGENT_SERVICE_ACCOUNT }, 'metrics-listen': { type: 'string' }, events: { type: 'boolean', default: true } },
    allowNegative: true,
  });
  // Every flag is checked before anything is opened or logged: a wrong command line ends in one line, not a half-started collector.
  const listen = listenFlag('--listen', values.listen, parseListen);
  const metricsListen = values['metrics-listen'] === undefined ? null : listenFlag('--metrics-listen', values['metrics-listen'], parseListen);
  const captureMs = durationFlag('--capture', values.capture, { off: true });
  const historyMs = durationFlag('--history', values.history, { minMs: 1_000 });
  const memoryBudget = values['memory-budget'] === undefined ? defaultBudget() : parseSize(values['memory-budget']);
  if (memoryBudget === null) throw new UsageError(`--memory-budget: ${JSON.stringify(values['memory-budget'])} is not a size like 900Mi or 2Gi`);
  const token = readToken(values['token-file']);
  if ((values['tls-cert'] === undefined) !== (values['tls-key'] === undefined)) throw new UsageError('--tls-cert and --tls-key go together');
  const tls = values['tls-cert'] && values['tls-key'] ? { cert: readFlagFile('--tls-cert', values['tls-cert']), key: readFlagFile('--tls-key', values['tls-key']) } : undefined;
  if (values.kubeconfig !== undefined) readFlagFile('--kubeconfig', values.kubeconfig);
  const log = logger('collector', undefined, values.pretty ? { color: wantColor(values.color, process.stdout) } : null);
  // With allowNegative, parseArgs reads `--no-kubernetes` as `kubernetes: false`, not as the option of that name.
  const noKubernetes = values['no-kubernetes'] || !values.kubernetes;
  const agentAuth = await agentAuthFromFlags({ mode: values['agent-auth'], serviceAccount: values['agent-service-account'], noKubernetes, log, ...(values.kubeconfig === undefined ? {} : { kubeconfig: values.kubeconfig }) });
  if (!agentAuth.ok) throw new UsageError(agentAuth.error);
  const dataDir = values['data-dir'];
  // Without --data-dir history still goes to a store, on a temporary file (it says so): one path, and a heap that does not grow with the window.
  const store = dataDir === undefined ? Store.temporary(log, { windowMs: historyMs }) : atPath('--data-dir', dataDir, () => Store.open(dataDir, log, { windowMs: historyMs }));
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
  const server = new CollectorServer({ collector: pipeline.collector, log, token, bundles: pipeline.bundles, services: pipeline.services, store: pipeline.store, metrics, agentAuth: agentAuth.mode, reviewer: agentAuth.reviewer, ...(tls ? { tls } : {}) });
  const addr = await listenOn('--listen', values.listen, () => server.listen(listen));
  log.info({ listen: addr, auth: token === null ? 'none' : 'bearer token', agentAuth: agentAuth.mode, tls: tls !== undefined }, 'collector listening');
  // Shedding history cannot hold RSS down if V8 lets garbage pile up to a heap limit it took from the machine, not the budget.
  // heap_size_limit is the old space plus V8's young generation and other spaces (192 MiB on 64-bit Node 24): the cap suggested leaves a fifth of the budget outside the heap.
  const heapLimit = getHeapStatistics().heap_size_limit;
  if (heapLimit > memoryBudget)
    log.warn(
      { heapLimitMB: Math.round(heapLimit / 2 ** 20), memoryBudgetMB: Math.round(memoryBudget / 2 ** 20), suggest: `NODE_OPTIONS=--max-old-space-size=${suggestedOldSpaceMb(memoryBudget)}` },
      "V8's heap may grow past the memory budget: start the collector with a heap cap (manifests/collector.yaml sets one)",
    );
  if (token === null) log.warn(agentAuth.mode === 'token' ? 'no token configured: any agent or client can connect (set CONNTRAIL_TOKEN or --token-file)' : 'no token configured: anyone who can reach the HTTP API can read it (set CONNTRAIL_TOKEN or --token-file); agents still need a reviewed ServiceAccount token');
  const metricsServer = metricsListen === null ? null : await listenOn('--metrics-listen', values['metrics-listen'] ?? '', () => startMetricsListener(metrics, metricsListen));
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
  const { Agent, readNodeFacts, startHealthServer, createHostIO, NodeState, createSamplers, parseBytes, DEFAULT_JOURNAL, AgentMetrics } = await agentModules();
  const { values } = parseArgs({
    args: [...args],
    options: { collector: { type: 'string' }, node: { type: 'string' }, interval: { type: 'string', default: '1s' }, 'token-file': { type: 'string' }, ca: { type: 'string' }, 'health-listen': { type: 'string' }, 'journal-max-age': { type: 'string' }, 'journal-max-bytes': { type: 'string' } },
  });
  if (values.collector === undefined) throw new UsageError('--collector ws://HOST:PORT is required');
  if (!URL.canParse(values.collector) || !/^(ws|wss|ws\+unix):$/.test(new URL(values.collector).protocol))
    throw new UsageError(`--collector: ${JSON.stringify(values.collector)} is not ws://HOST:PORT, wss://HOST:PORT or ws+unix:PATH`);
  const intervalMs = durationFlag('--interval', values.interval, { minMs: 100 });
  const journalAge = values['journal-max-age'] === undefined ? DEFAULT_JOURNAL.maxAgeMs : durationFlag('--journal-max-age', values['journal-max-age'], { off: true });
  const journalBytes = values['journal-max-bytes'] === undefined ? DEFAULT_JOURNAL.maxBytes : parseBytes(values['journal-max-bytes']);
  if (journalBytes === null) throw new UsageError(`--journal-max-bytes: ${JSON.stringify(values['journal-max-bytes'])} is not a size like 64MiB (or off)`);
  const healthListen = values['health-listen'] === undefined ? null : parseHostPort(values['health-listen']);
  if (healthListen === null && values['health-listen'] !== undefined) throw new UsageError(`--health-listen: ${JSON.stringify(values['health-listen'])} is not HOST:PORT`);
  const tokenFile = values['token-file'];
  const firstToken = readToken(tokenFile);
  const ca = values.ca === undefined ? undefined : readFlagFile('--ca', values.ca);
  const node = values.node ?? process.env.NODE_NAME ?? hostname();
  const log = logger('agent').child({ node });
  const state = new NodeState(createSamplers(), createHostIO());
  // Read from the agent only when scraped, which the health server (started after the agent) allows.
  const metrics = new AgentMetrics({ statuses: () => state.statuses(), skippedTicks: (): number => agent.skippedTicks, connected: (): boolean => agent.health().connected });
  state.onSampled((source, ms) => metrics.sampled(source, ms));
  const agent = new Agent({
    node,
    collectorUrl: values.collector,
    intervalMs,
    // Read now so a missing file stops the agent at start, then again at every (re)connect: projected tokens rotate.
    token: tokenFile === undefined ? firstToken : () => readToken(tokenFile),
    version: VERSION,
    state,
    log,
    readFacts: readNodeFacts,
    ...(ca === undefined ? {} : { ca }),
    journal: { maxAgeMs: journalAge, maxBytes: journalBytes },
    metrics,
  });
  log.info({ collector: values.collector, intervalMs, journal: journalAge > 0 && journalBytes > 0 ? { maxAgeMs: journalAge, maxBytes: journalBytes } : 'off' }, 'agent starting');
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
  const { Agent, readNodeFacts, createHostIO, NodeState, createSamplers } = await agentModules();
  const { createPipeline, CollectorServer, parseListen, renderSummary, findingLogger } = await collectorModules();
  // Flags first: nothing is opened for a command line that is wrong.
  const intervalMs = durationFlag('--interval', values.interval, { minMs: 100 });
  const listen = listenFlag('--listen', values.listen, parseListen);
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
  const addr = await listenOn('--listen', values.listen, () => server.listen(listen));
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
  if (extra.length > 0) throw new UsageError(`takes one STEP_DIR, not ${extra.length + 1}`);
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
  if (source === undefined) throw new UsageError(`SOURCE is required (one of ${sourceNames.join(', ')})`);
  if (extra.length > 0) throw new UsageError(`takes SOURCE and one FILE, not ${extra.length + 1} files`);
  if (!isSourceName(source)) throw new UsageError(`unknown source ${JSON.stringify(source)} (one of ${sourceNames.join(', ')})`);
  let text: string;
  try {
    text = readFileSync(file === '-' ? 0 : file, 'utf8');
  } catch (err) {
    if (file === '-') throw new FailureError(`cannot read standard input: ${fsReason(err)}`);
    throw new UsageError(`cannot read ${file}: ${fsReason(err)}`);
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
  if (dir === undefined) throw new UsageError('DIR is required: recorded outputs (DIR/<node>/<time>/<file>) or a bundle');
  if (extra.length > 0) throw new UsageError(`takes one DIR, not ${extra.length + 1}`);
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
  const gapMs = durationFlag('--gap', values.gap, { minMs: 100 });
  const { renderDoctor, runDoctor } = await import('./doctor.ts');
  const report = await runDoctor({ ...(values.node ? { node: values.node } : {}), gapMs, log: logger('doctor', process.env.LOG_LEVEL ?? 'silent') });
  process.stdout.write(values.json ? `${JSON.stringify(report)}\n` : `${renderDoctor(report)}\n`);
  return report.ok ? 0 : 1;
}

/**
 * GET `path` from the collector at `base`: `http://host:port`, `https://…` or
 * `unix:/path`. `ca`: a PEM bundle to trust for an https:// collector (its own
 * CA), beside the system's. A collector that cannot be reached is a failure
 * naming it; one that answers anything but 200 is too.
 */
async function collectorGet(base: string, path: string, token: string | null, ca?: string): Promise<import('node:http').IncomingMessage> {
  let res: import('node:http').IncomingMessage;
  try {
    res = await httpGet(base, path, token, ca);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (typeof code !== 'string') throw err;
    const hint = /CERT|UNABLE_TO/.test(code) ? ' (pass the CA that signed the collector\'s certificate with --ca)' : '';
    throw new FailureError(`cannot reach the collector at ${base}: ${(err as Error).message} [${code}]${hint}`);
  }
  if (res.statusCode !== 200) {
    let body = '';
    for await (const d of res) if (body.length < 4096) body += String(d);
    const said = body.replace(/\s+/g, ' ').trim();
    throw new FailureError(`the collector at ${base} answered ${String(res.statusCode)}${said === '' ? '' : `: ${said.length > 200 ? `${said.slice(0, 200)}…` : said}`}`);
  }
  return res;
}

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
  const collector = apiUrlFlag(values.collector);
  const token = readToken(values['token-file']);
  const ca = values.ca === undefined ? undefined : readFlagFile('--ca', values.ca);
  const res = await collectorGet(collector, '/api/incidents', token, ca);
  let body = '';
  for await (const d of res) body += String(d);
  let list: { id: string; service: string | null; nodes: string[]; findings: number; kinds: string[]; firstFinding: string }[];
  try {
    list = JSON.parse(body) as typeof list;
    if (!Array.isArray(list)) throw new Error('not a list');
  } catch {
    throw new FailureError(`${collector} answered /api/incidents with something other than conntrail's incident list: is it a conntrail collector?`);
  }
  if (values.json) process.stdout.write(`${body}\n`);
  else if (list.length === 0) process.stdout.write('no incidents\n');
  else for (const i of list) process.stdout.write(`${i.id}  ${i.firstFinding}  ${i.service ?? '-'}  nodes ${i.nodes.join(',')}  ${i.findings} findings (${i.kinds.join(', ')})\n`);
  return 0;
}

async function runFindings(args: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...args], allowNegative: true, options: { collector: { type: 'string' }, since: { type: 'string', default: '15m' }, json: { type: 'boolean', default: false }, color: { type: 'boolean' }, 'token-file': { type: 'string' }, ca: { type: 'string' } } });
  const collector = apiUrlFlag(values.collector);
  durationFlag('--since', values.since);
  const token = readToken(values['token-file']);
  const ca = values.ca === undefined ? undefined : readFlagFile('--ca', values.ca);
  const res = await collectorGet(collector, `/api/findings?since=${encodeURIComponent(values.since)}`, token, ca);
  if (!String(res.headers['content-type'] ?? '').startsWith('application/x-ndjson')) {
    res.resume();
    throw new FailureError(`${collector} answered /api/findings with ${String(res.headers['content-type'] ?? 'no content type')}, not NDJSON: is it a conntrail collector of this version?`);
  }
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(0);
  });
  let lines = 0;
  const count = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      for (const b of chunk) if (b === 0x0a) lines++;
      done(null, chunk);
    },
  });
  await pipeline(res, count, ...(values.json ? [] : [renderStream({ color: wantColor(values.color, process.stdout) })]), process.stdout);
  if (lines === 0 && !values.json) process.stderr.write(`no findings in the last ${values.since}\n`);
  return 0;
}

async function runBundle(args: readonly string[]): Promise<number> {
  const { values } = parseArgs({ args: [...args], options: { collector: { type: 'string' }, incident: { type: 'string' }, since: { type: 'string' }, output: { type: 'string', short: 'o' }, 'token-file': { type: 'string' }, ca: { type: 'string' } } });
  const collector = apiUrlFlag(values.collector);
  const file = values.output;
  if (file === undefined) throw new UsageError('-o FILE is required: where to write the bundle');
  if ((values.incident === undefined) === (values.since === undefined)) throw new UsageError('one of --incident ID or --since 10m is required, not both');
  if (values.since !== undefined) durationFlag('--since', values.since);
  const token = readToken(values['token-file']);
  const ca = values.ca === undefined ? undefined : readFlagFile('--ca', values.ca);
  // Before the collector builds the bundle: a file that can never be written fails now.
  checkWritable('-o', file);
  const path = values.incident !== undefined ? `/api/incidents/${encodeURIComponent(values.incident)}/bundle` : `/api/bundle?since=${encodeURIComponent(values.since ?? '')}`;
  const res = await collectorGet(collector, path, token, ca);
  const total = Number(res.headers['content-length'] ?? 0);
  const out = createWriteStream(file, { fd: atPath('-o', file, () => openSync(file, 'w')) });
  let got = 0;
  const bar = (done: boolean) => {
    if (!process.stderr.isTTY && !done) return;
    const width = 30;
    const frac = total > 0 ? Math.min(1, got / total) : done ? 1 : 0;
    process.stderr.write(`\r[${'#'.repeat(Math.round(frac * width)).padEnd(width, '.')}] ${(got / 1024).toFixed(0)} KiB${total ? ` of ${(total / 1024).toFixed(0)} KiB` : ''}${done ? '\n' : ''}`);
  };
  const progress = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      got += chunk.length;
      bar(false);
      done(null, chunk);
    },
  });
  try {
    await pipeline(res, progress, out);
  } catch (err) {
    if ((err as { syscall?: unknown }).syscall === 'write') throw new FailureError(`-o: cannot write ${file}: ${fsReason(err)}`);
    throw new FailureError(`the bundle from ${collector} broke off after ${(got / 1024).toFixed(0)} KiB: ${fsReason(err)}`);
  }
  bar(true);
  process.stderr.write(`wrote ${file}\n`);
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
