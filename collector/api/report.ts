// report.html: one self-contained page (inline CSS and SVG, no script, no
// network) meant to be attached to a ticket: a summary (what, where, when,
// how many, the fix), then per Service its endpoints appearing, draining and
// leaving on a time axis with the findings on the same axis, every moment
// labelled in the picture itself (a screenshot or a PDF has no hover), then
// every finding once, repeats folded, with its evidence lines verbatim.
// Every value came from a node or the API: all of it is HTML-escaped.
import type { FindingLine } from '../detection/aggregate.ts';
import type { EndpointSpan } from '../detection/endpoint-history.ts';
import { iso, tupleText, type Evidence, type FindingKind, type Severity, type Tuple } from '../detection/findings.ts';

export interface ReportInput {
  readonly title: string;
  readonly from: number;
  readonly to: number;
  readonly nodes: readonly string[];
  readonly endpoints: readonly (EndpointSpan & { readonly pod?: string | null })[];
  readonly findings: readonly FindingLine[];
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** What each kind means, for someone who does not know the kinds. */
const KIND_WORDS: Readonly<Record<FindingKind, string>> = {
  'port-reuse-to-removed-endpoint': 'new connections on a reused client port were sent to an endpoint that had left the Service',
  'stale-nat-to-removed-endpoint': 'conntrack kept sending a client to an endpoint that had left the Service',
  'lb-hairpin': "a pod's connection through the load balancer was sent back to its own node and never answered",
  'lb-healthcheck-dropped': "the load balancer's health checks are dropped on the node",
  'conntrack-pressure': 'the conntrack table is full or dropping flows',
  'unanswered-syn': 'connections got no answer to their SYN',
};
/** The same, short enough for a label on the time axis. */
const KIND_SHORT: Readonly<Record<FindingKind, string>> = {
  'port-reuse-to-removed-endpoint': 'port reuse',
  'stale-nat-to-removed-endpoint': 'stale NAT',
  'lb-hairpin': 'LB hairpin',
  'lb-healthcheck-dropped': 'LB health check dropped',
  'conntrack-pressure': 'conntrack pressure',
  'unanswered-syn': 'unanswered SYN',
};
const SEVERITY_RANK: Readonly<Record<Severity, number>> = { error: 0, warning: 1 };

const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;
/** "2020-06-08 09:58:26 UTC": the date is part of it, so a report read days later is not ambiguous. */
const utc = (ms: number): string => (Number.isFinite(ms) ? `${iso(ms).slice(0, 10)} ${iso(ms).slice(11, 19)} UTC` : 'unknown time');
const hms = (ms: number): string => (Number.isFinite(ms) ? iso(ms).slice(11, 19) : '--:--:--');
// A loop, not Math.min(...xs): a bundle of a long incident can hold more values than a call takes arguments.
const least = (xs: Iterable<number>): number => {
  let m = Infinity;
  for (const x of xs) if (x < m) m = x;
  return m;
};
const most = (xs: Iterable<number>): number => {
  let m = -Infinity;
  for (const x of xs) if (x > m) m = x;
  return m;
};
const parseIso = (s: string, fallback: number): number => {
  const t = Date.parse(s);
  return Number.isNaN(t) ? fallback : t;
};

/** Advice text with its `code` spans as <code>, everything escaped; an unmatched backtick stays text. */
export function adviceHtml(text: string): string {
  const parts = text.split('`');
  // An even count of parts means an odd count of backticks: the last one has no partner and is shown as is.
  const tail = parts.length % 2 === 0 ? `\`${parts.pop() ?? ''}` : '';
  return parts.map((p, i) => (i % 2 === 1 ? `<code>${esc(p)}</code>` : esc(p))).join('') + esc(tail);
}

/** The first sentence of the advice: up to the first full stop followed by a space and a capital (or the end), never inside a code span. */
export function firstSentence(text: string): string {
  let inCode = false;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '`') inCode = !inCode;
    else if (!inCode && text[i] === '.' && /^(\s+[A-Z`(]|\s*$)/.test(text.slice(i + 1, i + 4))) return text.slice(0, i + 1);
  }
  return text;
}

/** Repeats of one kind for one node, Service, endpoint and severity: shown once. */
interface Group {
  readonly lines: FindingLine[];
  readonly first: number;
  readonly last: number;
  readonly count: number;
  readonly tuples: readonly Tuple[];
  readonly moreTuples: number;
  readonly evidence: readonly Evidence[];
}

function groupFindings(findings: readonly FindingLine[]): Group[] {
  const byKey = new Map<string, FindingLine[]>();
  for (const f of findings) {
    const key = `${f.finding}|${f.node}|${f.service ?? ''}|${f.endpoint ?? ''}|${f.severity}`;
    const g = byKey.get(key);
    if (g === undefined) byKey.set(key, [f]);
    else g.push(f);
  }
  const groups: Group[] = [];
  for (const lines of byKey.values()) {
    lines.sort((a, b) => a.time - b.time);
    const tuples = new Map<string, Tuple>();
    const evidence = new Map<string, Evidence>();
    let moreTuples = 0;
    for (const l of lines) {
      for (const t of [...(l.tuple === null || l.tuples !== undefined ? [] : [l.tuple]), ...(l.tuples ?? [])]) tuples.set(tupleText(t), t);
      moreTuples += l.moreTuples ?? 0;
      for (const e of l.evidence) evidence.set(`${e.time}|${e.node}|${e.source}|${e.raw}`, e);
    }
    groups.push({
      lines,
      first: least(lines.map((l) => Math.min(l.time, parseIso(l.firstSeen, l.time)))),
      last: most(lines.map((l) => Math.max(l.time, parseIso(l.lastSeen, l.time)))),
      count: lines.reduce((n, l) => n + l.count, 0),
      tuples: [...tuples.values()],
      moreTuples,
      evidence: [...evidence.values()],
    });
  }
  return groups.sort((a, b) => a.first - b.first || SEVERITY_RANK[a.lines[0]?.severity ?? 'warning'] - SEVERITY_RANK[b.lines[0]?.severity ?? 'warning']);
}

// The time axis, in SVG user units; the SVG scales to the page (viewBox, width 100%).
const WIDTH = 1000;
const LABEL = 260;
const PLOT_LEFT = LABEL + 10;
const PLOT_RIGHT = WIDTH - 20;
const ROW = 22;
const LABEL_ROW = 17;
/** Moment and tick labels are 11 px DejaVu Sans Mono (0.602 em a glyph), so their width is known without a browser. */
const CHAR = 11 * 0.61;
const TICK_PX = 90;
const SECOND = 1_000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const NICE_STEPS = [1, 2, 5, 10, 15, 30].map((s) => s * SECOND).concat([1, 2, 5, 10, 15, 30].map((m) => m * MINUTE), [1, 2, 3, 6, 12, 24, 48, 168].map((h) => h * HOUR));

/** Tick times for [from, to]: the smallest nice step that leaves TICK_PX between labels, at multiples of the step (so on whole UTC seconds, minutes, hours). */
export function ticks(from: number, to: number, width = PLOT_RIGHT - PLOT_LEFT): number[] {
  const room = Math.max(2, Math.floor(width / TICK_PX));
  const step = NICE_STEPS.find((s) => (to - from) / s <= room) ?? Math.ceil((to - from) / room / (24 * HOUR)) * 24 * HOUR;
  const out: number[] = [];
  for (let t = Math.ceil(from / step) * step; t <= to; t += step) out.push(t);
  return out;
}

interface Mark {
  readonly time: number;
  readonly text: string;
  readonly cls: string;
  /** The y the leader line goes down to (an endpoint's lane, or the findings lane). */
  readonly laneY: number;
}

interface Placed extends Mark {
  readonly row: number;
  readonly x: number;
  readonly anchor: 'start' | 'end';
}

/** Many endpoints doing the same thing in the same second (a rollout of a big Deployment) are one label, or the rows would fill the page. */
function merged(marks: readonly Mark[]): Mark[] {
  const bySecond = new Map<string, Mark[]>();
  for (const m of marks) {
    const key = `${Math.floor(m.time / SECOND)}|${m.cls}`;
    const same = bySecond.get(key);
    if (same === undefined) bySecond.set(key, [m]);
    else same.push(m);
  }
  return [...bySecond.values()].flatMap((same) => {
    const m = same[0];
    if (m === undefined || same.length <= MAX_SAME || !['m-appeared', 'm-drained', 'm-left'].includes(m.cls)) return same;
    return [{ ...m, text: `${hms(m.time)} ${same.length} endpoints ${m.cls.slice(2)}` }];
  });
}
const MAX_SAME = 3;

/** Puts each label in the first row where it overlaps nothing, so labels of moments close in time stack instead of overprinting. */
function placeLabels(marks: readonly Mark[], x: (t: number) => number): Placed[] {
  const rows: [number, number][][] = [];
  const out: Placed[] = [];
  for (const m of [...marks].sort((a, b) => a.time - b.time || a.text.localeCompare(b.text))) {
    const w = m.text.length * CHAR;
    const at = x(m.time);
    const anchor = at + 4 + w <= PLOT_RIGHT + 18 ? 'start' : 'end';
    const x0 = anchor === 'start' ? at + 4 : at - 4 - w;
    const span: [number, number] = [Math.max(4, x0) - 6, Math.max(4, x0) + w + 6];
    let row = rows.findIndex((r) => r.every(([a, b]) => span[1] <= a || span[0] >= b));
    if (row === -1) {
      row = rows.length;
      rows.push([]);
    }
    rows[row]?.push(span);
    out.push({ ...m, row, x: anchor === 'start' ? Math.max(4, x0) : at - 4, anchor });
  }
  return out;
}

/** The span of time worth drawing: every moment and finding, with a margin, inside the bundle's window when that holds them. */
function axisRange(r: ReportInput, groups: readonly Group[]): [number, number] {
  const moments = [
    ...r.endpoints.flatMap((e) => [e.firstSeen, e.terminatingSince, e.removedAt].filter((t): t is number => t !== null)),
    ...groups.flatMap((g) => [g.first, g.last]),
  ].filter(Number.isFinite);
  if (moments.length === 0) return [r.from, Math.max(r.to, r.from + SECOND)];
  const lo = least(moments);
  const hi = most(moments);
  const pad = Math.max(2 * SECOND, (hi - lo) * 0.08);
  return [Math.max(Math.min(r.from, lo), lo - pad), Math.min(Math.max(r.to, hi), hi + pad)];
}

/** An endpoint as a moment's label names it: its address, and its pod (without the namespace the Service row names) when the API said. */
export const momentName = (e: { readonly endpoint: string; readonly pod?: string | null }): string => (e.pod ? `${e.endpoint} ${e.pod.slice(e.pod.indexOf('/') + 1)}` : e.endpoint);

function serviceBlock(service: string, eps: ReportInput['endpoints'], groups: readonly Group[], range: [number, number], startedAt: number): string {
  const [from, to] = range;
  const x = (t: number) => PLOT_LEFT + ((Math.min(Math.max(t, from), to) - from) / (to - from)) * (PLOT_RIGHT - PLOT_LEFT);
  const laneY = (i: number) => i * ROW;
  const marks: Mark[] = [];
  eps.forEach((e, i) => {
    const who = momentName(e);
    // Endpoints there at the first sample did not appear: they were already serving.
    if (e.firstSeen > startedAt) marks.push({ time: e.firstSeen, text: `${hms(e.firstSeen)} ${who} appeared`, cls: 'm-appeared', laneY: laneY(i) });
    if (e.terminatingSince !== null) marks.push({ time: e.terminatingSince, text: `${hms(e.terminatingSince)} ${who} drained`, cls: 'm-drained', laneY: laneY(i) });
    if (e.removedAt !== null) marks.push({ time: e.removedAt, text: `${hms(e.removedAt)} ${who} left`, cls: 'm-left', laneY: laneY(i) });
  });
  const findingsLane = laneY(eps.length);
  for (const g of groups) {
    const f = g.lines[0];
    if (f === undefined) continue;
    marks.push({ time: g.first, text: `${hms(g.first)} ${f.severity} ${KIND_SHORT[f.finding]}${g.count > 1 ? ` ×${g.count}` : ''}`, cls: `m-${f.severity}`, laneY: findingsLane });
  }
  const placed = placeLabels(merged(marks), x);
  const labelRows = Math.max(1, most(placed.map((p) => p.row + 1)));
  const top = 24 + labelRows * LABEL_ROW + 6;
  const lanesEnd = top + (eps.length + 1) * ROW;
  const axisY = lanesEnd + 8;
  const height = axisY + 40;
  const out: string[] = [];
  out.push(`<text x="4" y="16" class="svc">${esc(service)}</text>`);
  placed.forEach((p) => {
    const y = 24 + p.row * LABEL_ROW + 12;
    out.push(`<line class="leader ${p.cls}" x1="${x(p.time)}" x2="${x(p.time)}" y1="${y + 3}" y2="${top + p.laneY + 11}"/>`);
    out.push(`<text class="mlabel ${p.cls}" x="${p.x}" y="${y}" text-anchor="${p.anchor}">${esc(p.text)}</text>`);
  });
  eps.forEach((e, i) => {
    const y = top + laneY(i);
    const end = e.removedAt ?? to;
    const drainFrom = e.terminatingSince ?? end;
    // The Service row names the namespace; the label keeps to the 260 px column (12 px monospace: 34 characters).
    const label = e.pod ? `${e.endpoint} ${e.pod.slice(e.pod.indexOf('/') + 1)}` : e.endpoint;
    out.push(`<text x="14" y="${y + 15}" class="ep">${esc(label.length > 34 ? `${label.slice(0, 33)}…` : label)}<title>${esc(e.pod ? `${e.endpoint} pod ${e.pod}` : e.endpoint)}</title></text>`);
    out.push(`<rect class="serving" x="${x(e.firstSeen)}" y="${y + 5}" width="${Math.max(1, x(drainFrom) - x(e.firstSeen))}" height="12"><title>${esc(`${e.endpoint} serving from ${utc(e.firstSeen)}`)}</title></rect>`);
    if (e.terminatingSince !== null)
      out.push(`<rect class="draining" x="${x(drainFrom)}" y="${y + 5}" width="${Math.max(1, x(end) - x(drainFrom))}" height="12"><title>${esc(`${e.endpoint} draining from ${utc(e.terminatingSince)}`)}</title></rect>`);
    if (e.removedAt !== null) out.push(`<line class="removed" x1="${x(e.removedAt)}" x2="${x(e.removedAt)}" y1="${y + 2}" y2="${y + 20}"><title>${esc(`${e.endpoint} left at ${utc(e.removedAt)}`)}</title></line>`);
  });
  out.push(`<text x="14" y="${top + findingsLane + 15}" class="ep">findings</text>`);
  for (const g of groups) {
    const f = g.lines[0];
    if (f === undefined) continue;
    const cy = top + findingsLane + 11;
    const title = `<title>${esc(`${utc(g.first)}${g.last > g.first ? ` to ${utc(g.last)}` : ''}: ${f.finding}${g.count > 1 ? ` ×${g.count}` : ''} ${f.endpoint ?? ''}`)}</title>`;
    if (g.last > g.first) out.push(`<rect class="${f.severity}" x="${x(g.first)}" y="${cy - 3}" width="${x(g.last) - x(g.first)}" height="6">${title}</rect>`);
    out.push(`<circle class="${f.severity}" cx="${x(g.first)}" cy="${cy}" r="7">${title}</circle>`);
  }
  out.push(`<line class="axis" x1="${PLOT_LEFT}" x2="${PLOT_RIGHT}" y1="${axisY}" y2="${axisY}"/>`);
  let lastDay = '';
  for (const t of ticks(from, to)) {
    const day = iso(t).slice(0, 10);
    out.push(`<line class="tickline" x1="${x(t)}" x2="${x(t)}" y1="${top - 4}" y2="${axisY + 4}"/>`);
    // A label centred on a tick at the right edge would run out of the picture: it ends at its tick instead.
    const anchor = x(t) + 5 * CHAR > WIDTH ? 'end' : 'middle';
    out.push(`<text class="tick" x="${x(t)}" y="${axisY + 17}" text-anchor="${anchor}">${hms(t)}</text>`);
    // The date under the first tick and wherever it changes, so a window across midnight reads right.
    if (day !== lastDay) out.push(`<text class="tick tickday" x="${x(t)}" y="${axisY + 31}" text-anchor="${anchor}">${day}</text>`);
    lastDay = day;
  }
  out.push(`<text class="tick" x="14" y="${axisY + 17}">time (UTC)</text>`);
  return `<svg class="timeline" viewBox="0 0 ${WIDTH} ${height}" width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="${esc(`${service}: endpoints and findings over time`)}">${out.join('')}</svg>`;
}

function summaryHtml(r: ReportInput, groups: readonly Group[]): string {
  if (groups.length === 0)
    return `<section class="summary"><h2>Summary</h2><p>No finding in this window (${esc(utc(r.from))} to ${esc(utc(r.to))}) on ${esc(r.nodes.join(', ') || 'no node')}.</p></section>`;
  const lines = groups.flatMap((g) => g.lines);
  const kinds = [...new Set(lines.map((l) => l.finding))];
  const what = kinds
    .map((k) => {
      const ls = lines.filter((l) => l.finding === k);
      const sev = [...new Set(ls.map((l) => l.severity))].sort((a, b) => SEVERITY_RANK[a] - SEVERITY_RANK[b]).join('/');
      return `<li>${esc(KIND_WORDS[k])} <span class="kind">(${esc(k)}, ${esc(sev)}, ${esc(plural(ls.reduce((n, l) => n + l.count, 0), 'time'))})</span></li>`;
    })
    .join('');
  const list = (xs: readonly string[]) => (xs.length === 0 ? '-' : xs.map(esc).join(', '));
  const endpoints = [...new Set(lines.flatMap((l) => (l.endpoint === null ? [] : [`${l.endpoint}${l.pod ? ` (pod ${l.pod})` : ''}`])))];
  const tuples = new Set(groups.flatMap((g) => g.tuples.map(tupleText)));
  const more = groups.reduce((n, g) => n + g.moreTuples, 0);
  const count = groups.reduce((n, g) => n + g.count, 0);
  const worst = [...groups].sort((a, b) => SEVERITY_RANK[a.lines[0]?.severity ?? 'warning'] - SEVERITY_RANK[b.lines[0]?.severity ?? 'warning'] || a.first - b.first)[0]?.lines[0];
  return `<section class="summary"><h2>Summary</h2><dl>
<dt>What</dt><dd><ul>${what}</ul></dd>
<dt>Where</dt><dd>nodes: ${list([...new Set(lines.map((l) => l.node))])}<br>Services: ${list([...new Set(lines.map((l) => l.service ?? '(no Service)'))])}<br>endpoints: ${list(endpoints)}</dd>
<dt>When</dt><dd>first seen ${esc(utc(least(groups.map((g) => g.first))))}, last seen ${esc(utc(most(groups.map((g) => g.last))))}</dd>
<dt>How many</dt><dd>${esc(plural(count, 'finding'))} from ${more > 0 ? 'at least ' : ''}${esc(plural(tuples.size + more, 'distinct client tuple'))}</dd>
${worst === undefined ? '' : `<dt>Fix</dt><dd class="fix">${adviceHtml(firstSentence(worst.advice))}</dd>`}
</dl></section>`;
}

function findingHtml(g: Group): string {
  const f = g.lines[0];
  if (f === undefined) return '';
  // The first line of a fold says what happened in its own words; a fold's summary is mostly a count, said above.
  const lead = g.lines.find((l) => l.tuples === undefined) ?? f;
  const seen = g.count > 1 || g.last > g.first ? `${esc(plural(g.count, 'time'))}, first seen ${esc(utc(g.first))}, last seen ${esc(utc(g.last))}` : `seen ${esc(utc(g.first))}`;
  const tupleRows = g.tuples.map((t) => `<li>${esc(tupleText(t))}</li>`).join('') + (g.moreTuples > 0 ? `<li>and ${g.moreTuples} more</li>` : '');
  const details = Object.entries(f.details ?? {}).map(([k, v]) => `${k}=${v === null ? '-' : String(v)}`);
  return `<section class="finding ${f.severity}">
<h3><span class="sev">${esc(f.severity.toUpperCase())}</span> ${esc(KIND_WORDS[f.finding])} <span class="kind">${esc(f.finding)}</span></h3>
<p class="seen">${seen}${g.tuples.length + g.moreTuples > 1 ? `, from ${g.moreTuples > 0 ? 'at least ' : ''}${esc(plural(g.tuples.length + g.moreTuples, 'distinct client tuple'))}` : ''}</p>
<p>${esc(lead.summary)}</p>
<dl><dt>node</dt><dd>${esc(f.node)}</dd><dt>Service</dt><dd>${esc(f.service ?? '-')}</dd><dt>endpoint</dt><dd>${esc(f.endpoint ?? '-')}${f.pod ? ` (pod ${esc(f.pod)})` : ''}</dd>${f.clientPod ? `<dt>client pod</dt><dd>${esc(f.clientPod)}</dd>` : ''}<dt>${g.tuples.length + g.moreTuples === 1 ? 'client tuple' : 'client tuples'}</dt><dd>${tupleRows ? `<ul class="tuples">${tupleRows}</ul>` : '-'}</dd>${details.length > 0 ? `<dt>details</dt><dd>${esc(details.join(', '))}</dd>` : ''}</dl>
<h4>Evidence, as the tools printed it</h4>
<div class="evidence">${g.evidence.map((e) => `<div class="ev"><span class="evsrc">[${esc(`${e.time} ${e.node} ${e.source}`)}]</span> ${esc(e.raw)}</div>`).join('')}</div>
<p class="advice"><b>What to do:</b> ${adviceHtml(f.advice)}</p></section>`;
}

export function renderReport(r: ReportInput): string {
  const groups = groupFindings(r.findings);
  const range = axisRange(r, groups);
  const startedAt = least(r.endpoints.map((e) => e.firstSeen));
  const svcOf = (g: Group) => g.lines[0]?.service ?? '(no Service)';
  const services = [...new Set([...r.endpoints.map((e) => e.service), ...groups.map(svcOf)])].sort();
  const blocks = services.map((s) =>
    serviceBlock(
      s,
      r.endpoints.filter((e) => e.service === s),
      groups.filter((g) => svcOf(g) === s),
      range,
      startedAt,
    ),
  );
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>${esc(r.title)}</title>
<style>
*{box-sizing:border-box}
body{font:14px/1.45 "DejaVu Sans",system-ui,sans-serif;margin:0 auto;padding:16px 24px;max-width:1400px;color:#222;background:#fff;overflow-wrap:anywhere}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:18px 0 8px}h3{font-size:15px;margin:0 0 4px}h4{font-size:13px;margin:10px 0 4px;color:#555}
.meta{color:#555;margin:0}
.summary,.finding{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.summary dl,.finding dl{display:grid;grid-template-columns:max-content minmax(0,1fr);gap:2px 14px;margin:0}
dt{color:#666}dd{margin:0;min-width:0}ul{margin:0;padding-left:18px}.summary .fix{font-weight:600}
.kind{color:#777;font:12px "DejaVu Sans Mono",monospace}
svg.timeline{display:block;width:100%;height:auto;margin:8px 0 18px}
.svc{font-weight:600;font-size:14px}.ep{font:12px "DejaVu Sans Mono",monospace;fill:#333}
.tick,.mlabel{font:11px "DejaVu Sans Mono",monospace}.tick{fill:#555}.tickline{stroke:#e4e4e4}.axis{stroke:#888}
.mlabel{fill:#222}.mlabel.m-left{fill:#111;font-weight:bold}.mlabel.m-drained{fill:#8a5a00}.mlabel.m-appeared{fill:#1b5e20}.mlabel.m-error{fill:#b71c1c}.mlabel.m-warning{fill:#a35200}
.leader{stroke:#999;stroke-dasharray:2 2}
.serving{fill:#2e7d32}.draining{fill:#f9a825}.removed{stroke:#111;stroke-width:3}
circle.error,rect.error{fill:#d32f2f}circle.warning,rect.warning{fill:#fb8c00}
.finding{border-left:6px solid #999}.finding.error{border-left-color:#d32f2f}.finding.warning{border-left-color:#fb8c00}
.sev{font-size:12px;padding:1px 5px;border-radius:3px;background:#999;color:#fff}.error .sev{background:#d32f2f}.warning .sev{background:#fb8c00}
.seen{color:#444;margin:2px 0}
.evidence{background:#f6f6f6;padding:8px;font:12px/1.4 "DejaVu Sans Mono",monospace}
.ev{white-space:pre-wrap;overflow-wrap:anywhere;padding-left:2em;text-indent:-2em}.evsrc{color:#777}
code{font:12px "DejaVu Sans Mono",monospace;background:#eef;padding:0 3px;border-radius:3px;overflow-wrap:anywhere}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
@media print{
  body{max-width:none;margin:0;padding:0;font-size:11pt}
  .summary,.finding{box-shadow:none}
  .finding{break-inside:avoid-page}
  .finding~.finding{break-before:page}
  svg.timeline{break-inside:avoid}
  *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
</style></head><body>
<h1>${esc(r.title)}</h1>
<p class="meta">Bundle window ${esc(utc(r.from))} to ${esc(utc(r.to))} · nodes: ${esc(r.nodes.join(', ') || '-')}</p>
${summaryHtml(r, groups)}
<h2>Timeline</h2>
<p class="legend"><span style="background:#2e7d32"></span>endpoint serving<span style="background:#f9a825"></span>draining<span style="background:#111;width:3px"></span>left the Service<span style="background:#d32f2f;border-radius:6px"></span>error<span style="background:#fb8c00;border-radius:6px"></span>warning</p>
${blocks.join('\n') || '<p>No Service was programmed on these nodes in this window.</p>'}
<h2>Findings</h2>
${groups.map(findingHtml).join('\n') || '<p>No finding in this window.</p>'}
</body></html>
`;
}
