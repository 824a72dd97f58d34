// A bundle's report.html, rendered by headless Chromium (Debian's package,
// installed by `npm run setup`) at 1000 px and looked at as someone opening
// the ticket would: the summary says what, where, when, how many and the
// fix; the time axis has readable tick labels and the rollout's moments
// labelled, none overprinting another; nothing is cut off; a folded repeat
// is one entry with its tuples; advice shows code, not backticks; and text
// a node printed is shown, never run. The bundles come from recorded
// timelines replayed through in-process agents and a real collector.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { InProcessAgent } from '../../bin/in-process.ts';
import { readTimeline, recordingOf } from '../../bin/replay.ts';
import { adviceHtml, firstSentence, momentName, renderReport, ticks } from '../../collector/api/report.ts';
import type { FindingLine } from '../../collector/detection/aggregate.ts';
import { Detection } from '../../collector/detection/detection.ts';
import type { EndpointSpan } from '../../collector/detection/endpoint-history.ts';
import { tupleText } from '../../collector/detection/findings.ts';
import { readBundle } from '../../collector/incidents/bundle.ts';
import { BundleService } from '../../collector/incidents/bundle-service.ts';
import { Collector } from '../../collector/receive/collector.ts';
import { captureLog } from '../helpers/capture-log.ts';
import { decodePng, type Image } from '../helpers/png.ts';
import { saveBundle } from '../helpers/save-bundle.ts';

const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';
const TIMELINES = new URL('../fixtures/timelines/', import.meta.url).pathname;
const WIDTH = 1000;
const HEIGHT = 1600;

const work = mkdtempSync(join(tmpdir(), 'report-test-'));
afterAll(() => rmSync(work, { recursive: true, force: true }));

interface Bundle {
  readonly html: string;
  readonly findings: FindingLine[];
  readonly endpoints: (EndpointSpan & { pod?: string | null })[];
}

/** The first incident's bundle from a collector that lived through a recorded timeline (every recorded file, as `conntrail replay` reads them). */
async function bundleOf(timeline: string): Promise<Bundle> {
  const { log } = captureLog();
  let clock = 0;
  const collector = new Collector({ log, now: () => clock });
  const service = new BundleService(collector, log, { version: 'test' });
  new Detection((line) => service.incidents.add(line)).watch(collector);
  for (const [node, steps] of readTimeline(join(TIMELINES, timeline))) {
    const files = new Map<string, string>();
    const recording = () => recordingOf(files);
    const agent = new InProcessAgent(node, new NodeState(createSamplers(), createRecordedIO(recording, () => clock), () => clock), collector);
    for (const step of steps) {
      clock = step.time;
      for (const [f, t] of step.files) files.set(f, t);
      await agent.step(step.time);
    }
  }
  const id = String(service.list()[0]?.id);
  const tgz = join(work, `${timeline}.tar.gz`);
  await saveBundle(await service.incidentBundle(id), tgz);
  const { files } = await readBundle(tgz);
  const text = (p: string) => String(files.get(p) ?? '');
  const lines = (p: string) => text(p).split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  const ms = (v: unknown) => (v === null ? null : Date.parse(String(v)));
  return {
    html: text('report.html'),
    findings: lines('findings.jsonl') as unknown as FindingLine[],
    endpoints: lines('endpoints.jsonl').map((e) => ({ ...(e as unknown as EndpointSpan), firstSeen: Date.parse(String(e.firstSeen)), terminatingSince: ms(e.terminatingSince), removedAt: ms(e.removedAt) })),
  };
}

interface Box {
  readonly left: number;
  readonly top: number;
  readonly right: number;
  readonly bottom: number;
  readonly text: string;
  readonly cls: string;
}
interface Measured {
  readonly viewport: number;
  readonly scrollWidth: number;
  readonly title: string;
  readonly svgs: { readonly box: Box; readonly texts: Box[] }[];
  readonly evidence: (Box & { readonly scrollWidth: number; readonly clientWidth: number; readonly lineHeight: number })[];
  readonly findings: string[];
  readonly summary: string;
  readonly fix: string;
  readonly advice: { readonly text: string; readonly code: string[] }[];
  readonly injected: number;
  readonly bodyWidth: number;
  readonly sections: { readonly cls: string; readonly shadow: string; readonly breakBefore: string }[];
}

// Runs in the page (a copy with this script appended; the report itself has none): where everything landed, in CSS pixels of the 1000 px viewport.
const MEASURE = `(() => {
  const box = (el) => { const b = el.getBoundingClientRect(); return { left: b.left, top: b.top, right: b.right, bottom: b.bottom, text: el.textContent, cls: el.getAttribute('class') || '' }; };
  const m = {
    viewport: innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    title: document.title,
    svgs: [...document.querySelectorAll('svg.timeline')].map((s) => ({ box: box(s), texts: [...s.querySelectorAll('text')].map(box) })),
    evidence: [...document.querySelectorAll('.ev')].map((e) => ({ ...box(e), scrollWidth: e.scrollWidth, clientWidth: e.clientWidth, lineHeight: parseFloat(getComputedStyle(e).lineHeight) })),
    findings: [...document.querySelectorAll('section.finding')].map((s) => s.textContent),
    summary: document.querySelector('section.summary')?.textContent ?? '',
    fix: document.querySelector('section.summary .fix')?.innerHTML ?? '',
    advice: [...document.querySelectorAll('.advice')].map((a) => ({ text: a.textContent, code: [...a.querySelectorAll('code')].map((c) => c.textContent) })),
    injected: document.querySelectorAll('script:not(#measure), img, iframe').length,
    bodyWidth: document.body.getBoundingClientRect().width,
    sections: [...document.querySelectorAll('section')].map((s) => ({ cls: s.getAttribute('class'), shadow: getComputedStyle(s).boxShadow, breakBefore: getComputedStyle(s).breakBefore })),
  };
  const out = document.createElement('script');
  out.type = 'application/json';
  out.id = 'measured';
  out.textContent = JSON.stringify(m).replace(/</g, '\\\\u003c');
  document.body.append(out);
})();`;

const chromiumArgs = (dir: string, width: number) => [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', `--user-data-dir=${join(dir, 'profile')}`, '--hide-scrollbars', `--window-size=${width},${HEIGHT}`,
];

/** The page as Chromium lays it out and paints it at `width` px: a screenshot, and the measurements of MEASURE. */
async function render(name: string, html: string, width = WIDTH): Promise<{ png: Image; m: Measured }> {
  const dir = mkdtempSync(join(work, `${name}-`));
  writeFileSync(join(dir, 'report.html'), html);
  writeFileSync(join(dir, 'measure.html'), html.replace('</body>', `<script id="measure">${MEASURE}</script></body>`));
  const shot = join(dir, 'shot.png');
  await run(CHROMIUM, [...chromiumArgs(dir, width), `--screenshot=${shot}`, `file://${join(dir, 'report.html')}`], { timeout: 60_000 });
  if (process.env.CONNTRAIL_KEEP_SHOT) writeFileSync(`${process.env.CONNTRAIL_KEEP_SHOT}-${name}.png`, readFileSync(shot));
  const { stdout } = await run(CHROMIUM, [...chromiumArgs(dir, width), '--dump-dom', `file://${join(dir, 'measure.html')}`], { timeout: 60_000, maxBuffer: 64 << 20 });
  const json = /<script type="application\/json" id="measured">(.*?)<\/script>/s.exec(stdout)?.[1];
  if (json === undefined) throw new Error(`no measurements in Chromium's DOM of ${name}`);
  return { png: decodePng(readFileSync(shot)), m: JSON.parse(json) as Measured };
}

function countColor(png: Image, rgb: [number, number, number], area?: Box): number {
  let n = 0;
  const [x0, y0, x1, y1] = area ? [Math.floor(area.left), Math.floor(area.top), Math.ceil(area.right), Math.ceil(area.bottom)] : [0, 0, png.width, png.height];
  for (let y = Math.max(0, y0); y < Math.min(png.height, y1); y++)
    for (let x = Math.max(0, x0); x < Math.min(png.width, x1); x++) {
      const [r, g, b] = png.pixel(x, y);
      if (Math.abs(r - rgb[0]) < 12 && Math.abs(g - rgb[1]) < 12 && Math.abs(b - rgb[2]) < 12) n++;
    }
  return n;
}

/** Pixels clearly darker than the white page inside a box: text was painted there. */
function inked(png: Image, b: Box): number {
  let n = 0;
  for (let y = Math.max(0, Math.floor(b.top)); y < Math.min(png.height, Math.ceil(b.bottom)); y++)
    for (let x = Math.max(0, Math.floor(b.left)); x < Math.min(png.width, Math.ceil(b.right)); x++) {
      const [r, g, bl] = png.pixel(x, y);
      if (r + g + bl < 3 * 170) n++;
    }
  return n;
}

const overlap = (a: Box, b: Box): boolean => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
const hms = (ms: number): string => new Date(ms).toISOString().slice(11, 19);
const utc = (ms: number): string => `${new Date(ms).toISOString().slice(0, 10)} ${hms(ms)} UTC`;

/** Nothing runs out of the 1000 px page, no SVG text out of its picture, no label over another, every evidence line wrapped inside its box. */
function expectNothingCutOff(m: Measured): void {
  expect(m.viewport).toBe(WIDTH);
  expect(m.scrollWidth).toBeLessThanOrEqual(WIDTH);
  for (const svg of m.svgs) {
    expect(svg.box.right).toBeLessThanOrEqual(WIDTH);
    for (const t of svg.texts) {
      expect(t.left, t.text).toBeGreaterThanOrEqual(svg.box.left - 0.5);
      expect(t.right, t.text).toBeLessThanOrEqual(svg.box.right + 0.5);
    }
    const labels = svg.texts.filter((t) => /\b(mlabel|tick)\b/.test(t.cls));
    for (const [i, a] of labels.entries()) for (const b of labels.slice(i + 1)) expect(overlap(a, b), `"${a.text}" over "${b.text}"`).toBe(false);
  }
  expect(m.evidence.length).toBeGreaterThan(0);
  const longest = [...m.evidence].sort((a, b) => b.text.length - a.text.length)[0];
  if (longest === undefined) return;
  expect(longest.scrollWidth).toBeLessThanOrEqual(longest.clientWidth);
  expect(longest.right).toBeLessThanOrEqual(WIDTH);
  for (const e of m.evidence) expect(e.scrollWidth, e.text).toBeLessThanOrEqual(e.clientWidth);
}

describe('report.html', () => {
  let seed002: Bundle;
  let calico: Bundle;
  let seed003: Bundle;
  beforeAll(async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium package (npm run setup does)`);
    [seed002, calico, seed003] = await Promise.all([
      bundleOf('seed-002-reuse-to-removed-endpoint'),
      bundleOf('calico-4851-reuse-after-scale-down'),
      bundleOf('seed-003-ipvs-lb-healthcheck'),
    ]);
  }, 60_000);

  it('is self-contained, and paints the endpoint bars and the finding', async () => {
    const { html } = seed002;
    expect(html).not.toMatch(/\b(src|href)=["']?https?:/);
    expect(html).not.toMatch(/<script/i);
    const { png } = await render('paint', html);
    expect(png.width).toBe(WIDTH);
    // Endpoint bars (serving green, draining amber) and the error marker (red) are painted.
    expect(countColor(png, [0x2e, 0x7d, 0x32])).toBeGreaterThan(500);
    expect(countColor(png, [0xf9, 0xa8, 0x25])).toBeGreaterThan(50);
    expect(countColor(png, [0xd3, 0x2f, 0x2f])).toBeGreaterThan(100);
  }, 90_000);

  it('starts with what, where, when, how many, and the first sentence of the advice as the fix', async () => {
    const { m } = await render('summary', seed002.html);
    const f = seed002.findings[0];
    expect(seed002.findings).toHaveLength(1);
    if (f === undefined || f.tuple === null) throw new Error('seed 002 yields one finding with a tuple');
    const s = m.summary.replace(/\s+/g, ' ');
    expect(s).toContain('new connections on a reused client port were sent to an endpoint that had left the Service');
    expect(s).toContain(f.node);
    expect(s).toContain(String(f.service));
    expect(s).toContain(String(f.endpoint));
    expect(s).toContain(`first seen ${utc(f.time)}, last seen ${utc(f.time)}`);
    expect(s).toContain('1 finding from 1 distinct client tuple');
    // The advice's first sentence, whole, and nothing of the second.
    const [first, second] = f.advice.split(/(?<=\.) (?=[A-Z])/);
    expect(first).toMatch(/^The new connection was not load-balanced: .*\(kubernetes\/kubernetes#81775\)\.$/);
    expect(s).toContain(`Fix${first}`);
    expect(s).not.toContain(String(second).slice(0, 30));
  }, 90_000);

  it('labels the time axis with readable ticks and every moment of the rollout, at 1000 px, with nothing cut off or overprinted', async () => {
    const { png, m } = await render('axis', seed002.html);
    expectNothingCutOff(m);
    const svg = m.svgs.find((s) => s.texts.some((t) => t.text === seed002.findings[0]?.service));
    if (svg === undefined) throw new Error('no timeline for the Service');
    // Ticks at a nice step, labelled HH:MM:SS, each painted on the screenshot.
    const tickLabels = svg.texts.filter((t) => /\btick\b/.test(t.cls) && /^\d\d:\d\d:\d\d$/.test(t.text));
    expect(tickLabels.length).toBeGreaterThanOrEqual(4);
    const times = tickLabels.map((t) => Date.parse(`1970-01-01T${t.text}Z`));
    const steps = new Set(times.slice(1).map((t, i) => t - (times[i] ?? 0)));
    expect(steps.size).toBe(1);
    expect([1, 2, 5, 10, 15, 30].map((s) => s * 1000)).toContain([...steps][0]);
    for (const t of tickLabels) expect(inked(png, t), `tick ${t.text} painted`).toBeGreaterThan(20);
    // The date is on the axis too.
    expect(svg.texts.map((t) => t.text)).toContain(new Date(seed002.findings[0]?.time ?? 0).toISOString().slice(0, 10));

    // Each moment the endpoint history holds is a label with its time, placed at that time on the axis.
    const px = (ms: number): number => {
      // Tick labels are centred on their tick, except one at the right edge, which ends there: measure between the first and the one before last.
      const [a, b] = [tickLabels[0], tickLabels.at(-2)];
      const [ta, tb] = [times[0], times.at(-2)];
      if (a === undefined || b === undefined || ta === undefined || tb === undefined) return NaN;
      const [ca, cb] = [(a.left + a.right) / 2, (b.left + b.right) / 2];
      return ca + ((ms % 86_400_000) - ta) * ((cb - ca) / (tb - ta));
    };
    const start = Math.min(...seed002.endpoints.map((e) => e.firstSeen));
    const expected = seed002.endpoints.map((e) => ({ ...e, endpoint: momentName(e) })).flatMap((e) => [
      ...(e.firstSeen > start ? [{ t: e.firstSeen, text: `${hms(e.firstSeen)} ${e.endpoint} appeared` }] : []),
      ...(e.terminatingSince === null ? [] : [{ t: e.terminatingSince, text: `${hms(e.terminatingSince)} ${e.endpoint} drained` }]),
      ...(e.removedAt === null ? [] : [{ t: e.removedAt, text: `${hms(e.removedAt)} ${e.endpoint} left` }]),
    ]);
    // Seed 002's rollout: 10.27.1.249 drained, 10.27.1.250 added, then 10.27.1.249 removed.
    expect(expected.map((e) => e.text.split(' ').slice(1).join(' ')).sort()).toEqual(['10.27.1.249:80 drained', '10.27.1.249:80 left', '10.27.1.250:80 appeared']);
    const f = seed002.findings[0];
    if (f !== undefined) expected.push({ t: f.time, text: `${hms(f.time)} error port reuse` });
    const labels = svg.texts.filter((t) => /\bmlabel\b/.test(t.cls));
    expect(labels.map((l) => l.text).sort()).toEqual(expected.map((e) => e.text).sort());
    for (const e of expected) {
      const l = labels.find((x) => x.text === e.text);
      if (l === undefined) continue;
      expect(inked(png, l), `${e.text} painted`).toBeGreaterThan(30);
      // Beside its moment: starting just right of it, or ending just left of it.
      const at = px(e.t);
      expect(Math.min(Math.abs(l.left - at), Math.abs(l.right - at)), e.text).toBeLessThan(8);
    }
    // Two of them fall in the same second: they stack in rows instead of printing over each other (checked above), so the picture has more than one row of labels.
    expect(new Set(labels.map((l) => Math.round(l.top))).size).toBeGreaterThan(1);
  }, 90_000);

  it('wraps evidence lines inside the page, at 1000 px and on a narrow window', async () => {
    const { m } = await render('evidence', seed002.html);
    expectNothingCutOff(m);
    // The conntrack lines are longer than the page is wide at 12 px monospace: they wrap (more than one line tall) and stay whole.
    const longest = [...m.evidence].sort((a, b) => b.text.length - a.text.length)[0];
    if (longest === undefined) throw new Error('no evidence line');
    expect(longest.text.length * 12 * 0.6).toBeGreaterThan(WIDTH);
    expect(longest.bottom - longest.top).toBeGreaterThan(1.5 * longest.lineHeight);
    for (const f of seed002.findings) for (const e of f.evidence) expect(m.evidence.map((x) => x.text)).toContain(`[${e.time} ${e.node} ${e.source}] ${e.raw}`);
    const narrow = await render('narrow', seed002.html, 600);
    expect(narrow.m.scrollWidth).toBeLessThanOrEqual(600);
    for (const svg of narrow.m.svgs) expect(svg.box.right).toBeLessThanOrEqual(600);
    for (const e of narrow.m.evidence) expect(e.scrollWidth, e.text).toBeLessThanOrEqual(e.clientWidth);
  }, 90_000);

  it('shows folded repeats once, with first and last seen and every distinct client tuple', async () => {
    // Calico 4851: the first reuse is logged at once, the second folds into a line with its tuples.
    const lines = calico.findings.filter((f) => f.finding === 'port-reuse-to-removed-endpoint');
    expect(lines).toHaveLength(2);
    expect(lines.some((l) => l.tuples !== undefined && l.tuples.length > 0)).toBe(true);
    const tuples = new Set(lines.flatMap((l) => [...(l.tuples ?? []), ...(l.tuples === undefined && l.tuple ? [l.tuple] : [])].map(tupleText)));
    expect(tuples.size).toBe(2);
    const { m } = await render('folded', calico.html);
    expectNothingCutOff(m);
    expect(m.findings).toHaveLength(1);
    const section = (m.findings[0] ?? '').replace(/\s+/g, ' ');
    const first = Math.min(...lines.map((l) => Date.parse(l.firstSeen)));
    const last = Math.max(...lines.map((l) => Date.parse(l.lastSeen)));
    expect(section).toContain(`2 times, first seen ${utc(first)}, last seen ${utc(last)}, from 2 distinct client tuples`);
    for (const t of tuples) expect(section.split(t).length - 1, t).toBeGreaterThanOrEqual(1);
    // Each tuple is listed once among the client tuples.
    const listed = /client tuples(.*?)details/.exec(section)?.[1] ?? '';
    for (const t of tuples) expect(listed.split(t).length - 1, t).toBe(1);
    // One mark on the axis, counting both.
    const labels = m.svgs.flatMap((s) => s.texts).filter((t) => /\bm-error\b/.test(t.cls));
    expect(labels.map((l) => l.text)).toEqual([`${hms(first)} error port reuse ×2`]);
    expect(m.summary.replace(/\s+/g, ' ')).toContain('2 findings from 2 distinct client tuples');
  }, 90_000);

  it('renders advice with code spans, not backticks', async () => {
    const advice = [...new Set(seed003.findings.map((f) => f.advice))];
    const spans = advice.flatMap((a) => a.split('`').filter((_, i) => i % 2 === 1));
    expect(spans).toContain('status.loadBalancer.ingress[].ipMode: Proxy');
    const { m } = await render('advice', seed003.html);
    expectNothingCutOff(m);
    expect(m.advice.length).toBeGreaterThan(0);
    for (const a of m.advice) expect(a.text).not.toContain('`');
    expect(m.advice.flatMap((a) => a.code)).toEqual(expect.arrayContaining(spans));
    expect(m.fix).toContain('<code>status.loadBalancer.ingress[].ipMode: Proxy</code>');
    expect(m.fix).not.toContain('`');
  }, 90_000);

  it('shows hostile text a node printed as text: no element, no script runs', async () => {
    // An iptables comment is free text on the node (a Service's name, or anything a rule's author wrote): quoted verbatim in evidence.
    const hostile = `-A KUBE-SVC-X -m comment --comment "</div></pre><script>document.title='pwned'</script><img src=x onerror=alert(1)>" -j KUBE-SEP-Y`;
    const f = seed002.findings[0];
    if (f === undefined) throw new Error('seed 002 yields a finding');
    const html = renderReport({
      title: `incident <b>x</b>`,
      from: Math.min(...seed002.endpoints.map((e) => e.firstSeen)),
      to: f.time + 60_000,
      nodes: [f.node],
      endpoints: seed002.endpoints,
      findings: [{ ...f, evidence: [...f.evidence, { source: 'iptables', node: f.node, time: f.evidence[0]?.time ?? '', raw: hostile }] }],
    });
    expect(html).not.toContain('<script');
    expect(html).not.toContain('<img');
    expect(html).not.toContain('<b>x');
    const { m } = await render('hostile', html);
    expect(m.injected).toBe(0);
    expect(m.title).toBe('incident <b>x</b>');
    expect(m.evidence.map((e) => e.text)).toContain(`[${f.evidence[0]?.time} ${f.node} iptables] ${hostile}`);
    expectNothingCutOff(m);
  }, 90_000);

  it('prints each finding on its own page, full width and without shadows', async () => {
    const findings = groupsIn(seed003);
    expect(findings).toBeGreaterThan(1);
    // On screen the boxes have shadows and the page a maximum width.
    const screen = await render('screen', seed003.html);
    expect(screen.m.sections.every((s) => s.shadow !== 'none')).toBe(true);
    // The print rules, applied on screen at a Letter page's printable width (8.5 in less 0.4 in margins, at 96 px an inch).
    expect(seed003.html).toContain('@media print{');
    const { m } = await render('print', seed003.html.replace('@media print{', '@media all{'), 739);
    expect(m.scrollWidth).toBeLessThanOrEqual(739);
    expect(m.bodyWidth).toBe(739);
    expect(m.sections.map((s) => s.shadow)).toEqual(m.sections.map(() => 'none'));
    const sections = m.sections.filter((s) => /\bfinding\b/.test(s.cls));
    expect(sections).toHaveLength(findings);
    expect(sections.map((s) => s.breakBefore)).toEqual(sections.map((_, i) => (i === 0 ? 'auto' : 'page')));
    // And Chromium prints it: a page for the summary and timeline, then one at least for each finding.
    const dir = mkdtempSync(join(work, 'pdf-'));
    writeFileSync(join(dir, 'report.html'), seed003.html);
    await run(CHROMIUM, [...chromiumArgs(dir, WIDTH), '--no-pdf-header-footer', `--print-to-pdf=${join(dir, 'report.pdf')}`, `file://${join(dir, 'report.html')}`], { timeout: 60_000 });
    const pages = Number(/\/Type \/Pages\b[^>]*?\/Count (\d+)|\/Count (\d+)[^>]*?\/Type \/Pages\b/.exec(readFileSync(join(dir, 'report.pdf'), 'latin1'))?.slice(1).find(Boolean));
    expect(pages).toBeGreaterThanOrEqual(1 + findings);
  }, 90_000);
});

/** Findings the report shows: one per kind, node, Service, endpoint and severity, repeats folded in. */
function groupsIn(b: Bundle): number {
  return new Set(b.findings.map((f) => `${f.finding}|${f.node}|${f.service ?? ''}|${f.endpoint ?? ''}|${f.severity}`)).size;
}

describe('report.html parts', () => {
  it.each([
    // The axis is 710 units wide and wants 90 between labels: at most 7 steps.
    ['6 s', 0, 6_000, 1_000],
    ['8 s', 0, 8_000, 2_000],
    ['40 s', 0, 40_000, 10_000],
    ['3 min', 0, 180_000, 30_000],
    ['15 min', 0, 900_000, 300_000],
    ['2 h', 0, 7_200_000, 1_800_000],
  ])('ticks a %s span at the smallest nice step that leaves room for the labels, on whole multiples of it', (_, from, to, step) => {
    const t = ticks(from + 300, to + 300);
    expect(t.slice(1).map((x, i) => x - (t[i] ?? 0))).toEqual(t.slice(1).map(() => step));
    expect(t.every((x) => x % step === 0)).toBe(true);
    expect(t.length).toBeLessThanOrEqual(8);
  });

  it.each([
    ['Delete the entry: `conntrack -D -p udp --orig-dst 10.0.0.1`. Then check kube-proxy.', 'Delete the entry: `conntrack -D -p udp --orig-dst 10.0.0.1`.'],
    ['Set net.ipv4.vs.conn_reuse_mode=1 (kubernetes/kubernetes#81775). On older kernels upgrade.', 'Set net.ipv4.vs.conn_reuse_mode=1 (kubernetes/kubernetes#81775).'],
    ['Run `a. B` first. Then more.', 'Run `a. B` first.'],
    ['No full stop at all', 'No full stop at all'],
  ])('takes the first sentence of %j', (text, first) => {
    expect(firstSentence(text)).toBe(first);
  });

  it('renders code spans as <code>, escapes everything, and keeps an unmatched backtick as text', () => {
    expect(adviceHtml('run `tcpdump -nn host <ip>` & see')).toBe('run <code>tcpdump -nn host &#60;ip&#62;</code> &#38; see');
    expect(adviceHtml('a `b` c ` d')).toBe('a <code>b</code> c ` d');
  });

  it('writes one label for many endpoints leaving in the same second', () => {
    const service = 'ns/big:http';
    const endpoints = Array.from({ length: 50 }, (_, i) => ({ service, endpoint: `10.1.0.${i}:80`, firstSeen: 1_000, terminatingSince: null, removedAt: 5_500, raw: '', rawAt: 1_000 }));
    const html = renderReport({ title: 't', from: 0, to: 10_000, nodes: ['n'], endpoints, findings: [] });
    const labels = [...html.matchAll(/<text class="mlabel[^"]*"[^>]*>([^<]*)</g)].map((m) => m[1]);
    expect(labels).toEqual(['00:00:05 50 endpoints left']);
  });

  it('renders a report with no endpoint and no finding', () => {
    const html = renderReport({ title: 't', from: 0, to: 60_000, nodes: [], endpoints: [], findings: [] });
    expect(html).toContain('No finding in this window');
    expect(html).toContain('No Service was programmed');
  });
});
