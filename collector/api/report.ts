// report.html: one self-contained page (inline CSS and SVG, no script, no
// network) showing, per Service, its endpoints appearing, draining and
// leaving on a time axis, with the findings on the same axis, then every
// finding with its evidence lines.
import type { FindingLine } from '../detection/aggregate.ts';
import type { EndpointSpan } from '../detection/endpoint-history.ts';
import { iso, tupleText } from '../detection/findings.ts';

export interface ReportInput {
  readonly title: string;
  readonly from: number;
  readonly to: number;
  readonly nodes: readonly string[];
  readonly endpoints: readonly (EndpointSpan & { readonly pod?: string | null })[];
  readonly findings: readonly FindingLine[];
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const WIDTH = 1000;
const LABEL = 260;
const ROW = 22;

export function renderReport(r: ReportInput): string {
  const from = Math.min(r.from, ...r.findings.map((f) => f.time), ...r.endpoints.map((e) => e.firstSeen));
  const to = Math.max(r.to, from + 1_000, ...r.findings.map((f) => f.time));
  const x = (t: number) => LABEL + ((Math.min(Math.max(t, from), to) - from) / (to - from)) * (WIDTH - LABEL - 20);
  const services = [...new Set([...r.endpoints.map((e) => e.service), ...r.findings.map((f) => f.service ?? '(no Service)')])].sort();
  const blocks: string[] = [];
  for (const service of services) {
    const eps = r.endpoints.filter((e) => e.service === service);
    const fs = r.findings.filter((f) => (f.service ?? '(no Service)') === service);
    const height = (eps.length + 1) * ROW + 30;
    const rows: string[] = [];
    rows.push(`<text x="4" y="16" class="svc">${esc(service)}</text>`);
    eps.forEach((e, i) => {
      const y = (i + 1) * ROW + 4;
      const end = e.removedAt ?? to;
      const drainFrom = e.terminatingSince ?? end;
      // The Service row names the namespace; the label keeps to the 260 px column.
      const label = e.pod ? `${e.endpoint} ${e.pod.slice(e.pod.indexOf('/') + 1)}` : e.endpoint;
      rows.push(`<text x="14" y="${y + 13}" class="ep">${esc(label.length > 40 ? `${label.slice(0, 39)}…` : label)}<title>${esc(e.pod ? `${e.endpoint} pod ${e.pod}` : e.endpoint)}</title></text>`);
      rows.push(`<rect class="serving" x="${x(e.firstSeen)}" y="${y + 3}" width="${Math.max(1, x(drainFrom) - x(e.firstSeen))}" height="12"><title>${esc(`${e.endpoint} serving from ${iso(e.firstSeen)}`)}</title></rect>`);
      if (e.terminatingSince !== null)
        rows.push(`<rect class="draining" x="${x(drainFrom)}" y="${y + 3}" width="${Math.max(1, x(end) - x(drainFrom))}" height="12"><title>${esc(`${e.endpoint} draining from ${iso(e.terminatingSince)}`)}</title></rect>`);
      if (e.removedAt !== null) rows.push(`<line class="removed" x1="${x(e.removedAt)}" x2="${x(e.removedAt)}" y1="${y}" y2="${y + 18}"><title>${esc(`${e.endpoint} left at ${iso(e.removedAt)}`)}</title></line>`);
    });
    for (const f of fs)
      rows.push(`<circle class="${f.severity}" cx="${x(f.time)}" cy="11" r="7"><title>${esc(`${iso(f.time)} ${f.finding} ${f.endpoint ?? ''}`)}</title></circle>`);
    rows.push(`<line class="axis" x1="${LABEL}" x2="${WIDTH - 20}" y1="${height - 8}" y2="${height - 8}"/>`);
    rows.push(`<text x="${LABEL}" y="${height}" class="tick">${esc(iso(from))}</text><text x="${WIDTH - 20}" y="${height}" class="tick" text-anchor="end">${esc(iso(to))}</text>`);
    blocks.push(`<svg width="${WIDTH}" height="${height + 4}" role="img" aria-label="${esc(service)}">${rows.join('')}</svg>`);
  }
  const findingRows = [...r.findings]
    .sort((a, b) => a.time - b.time)
    .map(
      (f) => `<section class="finding ${f.severity}"><h3>${esc(iso(f.time))} · ${esc(f.severity.toUpperCase())} · ${esc(f.finding)}${f.tuples !== undefined ? ` · repeated ×${f.count}, ${esc(f.firstSeen)} to ${esc(f.lastSeen)}` : ''}</h3>
<p>${esc(f.summary)}</p>
<dl><dt>node</dt><dd>${esc(f.node)}</dd><dt>Service</dt><dd>${esc(f.service ?? '-')}</dd>${f.tuples !== undefined ? `<dt>tuples</dt><dd>${f.tuples.map((t) => esc(tupleText(t))).join('<br>')}${f.moreTuples ? ` and ${f.moreTuples} more` : ''}</dd>` : `<dt>tuple</dt><dd>${esc(f.tuple ? tupleText(f.tuple) : '-')}</dd>`}<dt>endpoint</dt><dd>${esc(f.endpoint ?? '-')}${f.pod ? ` (pod ${esc(f.pod)})` : ''}</dd></dl>
<pre>${f.evidence.map((e) => esc(`[${e.time} ${e.node} ${e.source}] ${e.raw}`)).join('\n')}</pre>
<p class="advice">${esc(f.advice)}</p></section>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(r.title)}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:20px}.meta{color:#555}
svg{display:block;margin:8px 0 18px;border-bottom:1px solid #eee}
.svc{font-weight:600;font-size:13px}.ep{font:12px monospace;fill:#333}.tick{font-size:10px;fill:#777}
.serving{fill:#2e7d32}.draining{fill:#f9a825}.removed{stroke:#111;stroke-width:3}.axis{stroke:#999}
circle.error{fill:#d32f2f}circle.warning{fill:#fb8c00}
.finding{border-left:6px solid #999;padding:4px 12px;margin:12px 0}.finding.error{border-color:#d32f2f}.finding.warning{border-color:#fb8c00}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}dl{display:grid;grid-template-columns:90px auto;margin:0}dt{color:#666}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px;vertical-align:middle}
</style></head><body>
<h1>${esc(r.title)}</h1>
<p class="meta">${esc(iso(r.from))} to ${esc(iso(r.to))} · nodes: ${esc(r.nodes.join(', ') || '-')} · ${r.findings.length} finding(s)</p>
<p class="legend"><span style="background:#2e7d32"></span>endpoint serving<span style="background:#f9a825"></span>draining<span style="background:#111;width:3px"></span>left the Service<span style="background:#d32f2f;border-radius:6px"></span>error<span style="background:#fb8c00;border-radius:6px"></span>warning</p>
${blocks.join('\n') || '<p>No Service was programmed on these nodes in this window.</p>'}
<h2>Findings</h2>
${findingRows || '<p>No finding in this window.</p>'}
</body></html>
`;
}
