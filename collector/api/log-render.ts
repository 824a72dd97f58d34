// The collector's pino JSON log, rendered for a person at a terminal
// (`kubectl logs -f … | conntrail logs`, or `conntrail collector --pretty`).
// A finding becomes a short block: what, where, the evidence lines exactly as
// the tools printed them, and the advice. Anything that is not a JSON object
// (a half line, a stack trace, kubectl's own messages) passes through as is.
import { Transform, type TransformCallback } from 'node:stream';

export interface RenderOptions {
  readonly color: boolean;
}

const LEVELS: Record<number, { name: string; color: string }> = {
  10: { name: 'TRACE', color: '\x1b[90m' },
  20: { name: 'DEBUG', color: '\x1b[90m' },
  30: { name: 'INFO ', color: '\x1b[36m' },
  40: { name: 'WARN ', color: '\x1b[33m' },
  50: { name: 'ERROR', color: '\x1b[31m' },
  60: { name: 'FATAL', color: '\x1b[41;97m' },
};
const RESET = '\x1b[0m';
const BOLD = '\x1b[1m';
const DIM = '\x1b[2m';

/** pino's own fields and those a finding block shows itself. */
const PINO_FIELDS = new Set(['level', 'time', 'pid', 'hostname', 'msg', 'v']);

type Json = Record<string, unknown>;

export function renderLogLine(line: string, opts: RenderOptions): string {
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    return line;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return line;
  const o = parsed as Json;
  const paint = (code: string, text: string) => (opts.color ? `${code}${text}${RESET}` : text);
  const level = LEVELS[typeof o.level === 'number' ? o.level : 30] ?? { name: String(o.level).toUpperCase().padEnd(5), color: '' };
  const head = `${paint(DIM, timeOf(o.time))} ${paint(level.color, level.name)}`;
  if (typeof o.finding === 'string') return renderFinding(o, head, paint, level.color);
  const rest = Object.entries(o)
    .filter(([k]) => !PINO_FIELDS.has(k))
    .map(([k, v]) => `${paint(DIM, `${k}=`)}${valueText(v)}`)
    .join(' ');
  return `${head} ${typeof o.msg === 'string' ? o.msg : ''}${rest === '' ? '' : ` ${rest}`}`;
}

function renderFinding(o: Json, head: string, paint: (code: string, text: string) => string, color: string): string {
  const lines: string[] = [];
  const where = [o.node, o.service].filter((x) => typeof x === 'string').join('  ');
  const folded = Array.isArray(o.tuples);
  const count = typeof o.count === 'number' && (folded || o.count > 1) ? `  repeated ×${o.count} (${String(o.firstSeen)} .. ${String(o.lastSeen)})` : '';
  lines.push(`${head} ${paint(BOLD + color, String(o.finding))}  ${where}${count}`);
  const field = (label: string, text: string) => lines.push(`  ${paint(DIM, label.padEnd(9))}${text === '' ? '' : ` ${text}`}`);
  const t = o.tuple as { proto?: string; src?: string; sport?: number | null; dst?: string; dport?: number | null } | null | undefined;
  const tupleLine = (x: { proto?: string; src?: string; sport?: number | null; dst?: string; dport?: number | null }) => `${x.proto ?? '?'} ${x.src ?? '?'}:${x.sport ?? '-'} -> ${x.dst ?? '?'}:${x.dport ?? '-'}`;
  if (folded) {
    const ts = o.tuples as { proto?: string; src?: string; sport?: number | null; dst?: string; dport?: number | null }[];
    field('tuples', `${ts.length}${typeof o.moreTuples === 'number' && o.moreTuples > 0 ? ` (+${o.moreTuples} more)` : ''}`);
    for (const x of ts) lines.push(`    ${tupleLine(x)}`);
  } else if (t) field('tuple', tupleLine(t));
  if (typeof o.endpoint === 'string') field('endpoint', `${o.endpoint}${typeof o.pod === 'string' ? ` (pod ${o.pod})` : ''}`);
  else if (typeof o.pod === 'string') field('pod', o.pod);
  if (typeof o.clientPod === 'string') field('client', `pod ${o.clientPod}`);
  if (typeof o.msg === 'string') field('what', o.msg);
  const evidence = Array.isArray(o.evidence) ? (o.evidence as Json[]) : [];
  if (evidence.length > 0) {
    field('evidence', '');
    for (const e of evidence) {
      lines.push(`    ${paint(DIM, `[${String(e.time ?? '')} ${String(e.node ?? '')} ${String(e.source ?? '')}]`)}`);
      lines.push(`      ${String(e.raw ?? '')}`);
    }
  }
  if (typeof o.advice === 'string') field('advice', o.advice);
  const details = o.details;
  if (typeof details === 'object' && details !== null && Object.keys(details).length > 0)
    field(
      'details',
      Object.entries(details as Json)
        .map(([k, v]) => `${k}=${valueText(v)}`)
        .join(' '),
    );
  return lines.join('\n');
}

function timeOf(time: unknown): string {
  if (typeof time === 'string') return time;
  if (typeof time === 'number' && Number.isFinite(time)) return new Date(time).toISOString();
  return '-'.repeat(24);
}

function valueText(v: unknown): string {
  if (typeof v === 'string') return /^[^\s"=]+$/.test(v) ? v : JSON.stringify(v);
  return JSON.stringify(v) ?? String(v);
}

/** A stream that takes JSON lines (in any chunking) and puts out rendered ones. */
export function renderStream(opts: RenderOptions): Transform {
  let pending = '';
  return new Transform({
    transform(chunk: Buffer | string, _enc, done: TransformCallback) {
      pending += chunk.toString();
      let out = '';
      let i: number;
      while ((i = pending.indexOf('\n')) >= 0) {
        out += `${renderLogLine(pending.slice(0, i), opts)}\n`;
        pending = pending.slice(i + 1);
      }
      done(null, out);
    },
    flush(done: TransformCallback) {
      done(null, pending === '' ? '' : `${renderLogLine(pending, opts)}\n`);
    },
  });
}

/** Colour on a terminal, unless NO_COLOR is set; --color / --no-color decide over both. */
export function wantColor(flag: boolean | undefined, stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv = process.env): boolean {
  if (flag !== undefined) return flag;
  if (env.NO_COLOR !== undefined && env.NO_COLOR !== '') return false;
  return stream.isTTY === true;
}
