// `conntrail replay DIR`: recorded raw outputs, timestamped per node, go
// through the agent's real samplers (parse, key, diff), the real wire
// encoding, the collector's node views and the same detectors, and come out
// as the log lines the collector would have written.
//
// Layout: DIR/<node>/<time>/<file>, where <time> is an ISO 8601 time or
// milliseconds since the epoch, and <file> is one of RECORDED_FILES. A file
// not recorded at a step keeps its last recorded content (an IPVS table that
// did not change need not be recorded again); a file never recorded makes
// that source unavailable, exactly as on a node without it.
//
// What the Kubernetes API said comes from a second directory, `--kube
// KUBE_DIR` (KUBE_DIR/<time>/<file>.json: lists and watch events as kubectl
// or the API print them; bin/replay-kube.ts has the format). It is separate
// because it is recorded separately (kubectl, not the node) and so one node
// recording can be replayed against several API states without copying it.
// Its events go into the collector's KubeCatalog interleaved with the node
// steps by time, each before any step at or after its time, so every step
// sees the API as it was then; without it the pipeline has no API, as a
// collector with --no-kubernetes.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { NodeState } from '../agent/node-state.ts';
import { createRecordedIO } from '../agent/recorded-io.ts';
import { createSamplers } from '../agent/samplers.ts';
import { recordedFiles, SYSCTL_RECORDED } from '../agent/sources/registry.ts';
import { parseSysctl } from '../agent/sources/sysctl.ts';
import type { FindingLine } from '../collector/detection/aggregate.ts';
import { createPipeline } from '../collector/pipeline.ts';
import { ConntrailError } from '../contract/errors.ts';
import { bundleKubeEvents, bundleTimelines, deriveFindings, readBundle } from '../collector/incidents/bundle.ts';
import { nodeFacts, type NodeFacts } from '../contract/records.ts';
import { InProcessAgent } from './in-process.ts';
import { readKubeRecording, stampTime } from './replay-kube.ts';
import { KubeCatalog } from '../collector/kube/catalog.ts';

/** Recorded file name → the command line or path the samplers ask HostIO for: each source's reads as agent/sources/registry.ts declares them. */
export const RECORDED_FILES: Readonly<Record<string, string>> = recordedFiles();
/** `sysctl -a` text; each line becomes the /proc/sys file the agent reads. */
const SYSCTL_FILE = SYSCTL_RECORDED;
/** Node facts as JSON (the systeminformation picture: kernel, hostname …). */
const FACTS_FILE = 'facts.json';

function isBundle(path: string): boolean {
  if (!existsSync(path)) throw new ConntrailError('BAD_INPUT', `${path} does not exist`);
  if (!statSync(path).isDirectory()) return true;
  return existsSync(join(path, 'manifest.json')) || readdirSync(path).some((d) => existsSync(join(path, d, 'manifest.json')));
}

export interface ReplayStep {
  readonly time: number;
  readonly files: ReadonlyMap<string, string>;
}

export function readTimeline(dir: string): Map<string, ReplayStep[]> {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new ConntrailError('BAD_INPUT', `${dir} is not a directory`);
  const nodes = new Map<string, ReplayStep[]>();
  for (const node of readdirSync(dir).sort()) {
    const nodeDir = join(dir, node);
    if (!statSync(nodeDir).isDirectory()) continue;
    const steps: ReplayStep[] = [];
    for (const stamp of readdirSync(nodeDir)) {
      const time = stampTime(stamp);
      if (Number.isNaN(time)) throw new ConntrailError('BAD_INPUT', `${join(nodeDir, stamp)}: not a time (ISO 8601 or epoch milliseconds)`);
      const files = new Map<string, string>();
      for (const f of readdirSync(join(nodeDir, stamp))) {
        if (!(f in RECORDED_FILES) && f !== SYSCTL_FILE && f !== FACTS_FILE)
          throw new ConntrailError('BAD_INPUT', `${join(nodeDir, stamp, f)}: unknown recorded file (expected one of ${[...Object.keys(RECORDED_FILES), SYSCTL_FILE, FACTS_FILE].join(', ')})`);
        files.set(f, readFileSync(join(nodeDir, stamp, f), 'utf8'));
      }
      steps.push({ time, files });
    }
    steps.sort((a, b) => a.time - b.time);
    nodes.set(node, steps);
  }
  if (nodes.size === 0) throw new ConntrailError('BAD_INPUT', `${dir} holds no node directories`);
  return nodes;
}

/** What a recorded step's agent reads (command line or path → text): the recorded files, and sysctl.txt as /proc/sys files. */
export function recordingOf(files: ReadonlyMap<string, string>): Map<string, string> {
  const rec = new Map<string, string>();
  for (const [f, text] of files) {
    const key = RECORDED_FILES[f];
    if (key !== undefined) rec.set(key, text);
  }
  const sysctl = files.get(SYSCTL_FILE);
  if (sysctl !== undefined)
    for (const s of parseSysctl(sysctl).records) {
      const parts = s.name.split('.');
      // sysctl names a per-interface knob with `/` for a dot in the interface name.
      rec.set(`/proc/sys/${parts.map((p) => p.replaceAll('/', '.')).join('/')}`, `${s.value}\n`);
    }
  return rec;
}

export interface ReplayOptions {
  /** A recorded Kubernetes API directory (KUBE_DIR/<time>/<file>.json); none: the replay has no API. */
  readonly kube?: string;
}

/** Replays a timeline directory or an incident bundle (.tar.gz or unpacked); returns the finding lines in the order the collector would log them. */
export async function replay(dir: string, log: Logger, sink?: (line: FindingLine) => void, options: ReplayOptions = {}): Promise<FindingLine[]> {
  if (isBundle(dir)) {
    if (options.kube !== undefined) throw new ConntrailError('BAD_INPUT', `${dir}: a bundle replays with the API record it carries (kubernetes.jsonl); --kube is for timeline directories`);
    const { files } = await readBundle(dir).catch((err: Error) => {
      throw new ConntrailError('BAD_INPUT', `${dir}: not a readable conntrail bundle (${err.message})`, { cause: err });
    });
    const { findings } = deriveFindings(bundleTimelines(files), log, bundleKubeEvents(files));
    for (const f of findings) sink?.(f);
    return findings;
  }
  const timeline = readTimeline(dir);
  // Read before anything runs, so a bad API file fails the replay before any finding is printed.
  const kubeEvents = options.kube === undefined ? [] : readKubeRecording(options.kube);
  const kube = options.kube === undefined ? null : new KubeCatalog();
  const lines: FindingLine[] = [];
  let clock = 0;
  const { collector, detection } = createPipeline({
    log,
    now: () => clock,
    kube,
    onFinding: (line) => {
      lines.push(line);
      sink?.(line);
    },
  });
  // Interleave nodes by time, as a collector receives them.
  const events = [...timeline].flatMap(([node, steps]) => steps.map((step) => ({ node, step }))).sort((a, b) => a.step.time - b.step.time);
  const agents = new Map<string, { agent: InProcessAgent; carried: Map<string, string> }>();
  let applied = 0;
  for (const { node, step } of events) {
    clock = step.time;
    // The catalog answers "as of T" either way; applying as time passes also moves its revision when the API changed, so the Service model is rebuilt at the step that first sees the change.
    for (let e = kubeEvents[applied]; kube !== null && e !== undefined && e.time <= step.time; e = kubeEvents[++applied]) kube.apply(e);
    let a = agents.get(node);
    if (a === undefined) {
      const carried = new Map<string, string>();
      a = { agent: new InProcessAgent(node, new NodeState(createSamplers(), createRecordedIO(() => recordingOf(carried), () => clock), () => clock), collector), carried };
      agents.set(node, a);
    }
    for (const [f, text] of step.files) a.carried.set(f, text);
    const factsText = step.files.get(FACTS_FILE);
    let facts: NodeFacts | undefined;
    if (factsText !== undefined) {
      const decoded = nodeFacts.decode(JSON.parse(factsText), 'facts.json');
      if (!decoded.ok) throw new ConntrailError('BAD_INPUT', `${node}: ${decoded.error}`);
      facts = decoded.value;
    }
    await a.agent.step(step.time, facts);
  }
  detection.flush(clock + 3_600_000);
  return lines;
}
