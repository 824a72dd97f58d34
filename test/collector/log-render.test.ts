// Rendering real collector log lines for a person: a finding as a block with
// its evidence untouched, colours by severity only when asked, and anything
// that is not a JSON object passed through as it came.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { renderLogLine, wantColor } from '../../collector/api/log-render.ts';

const lines = readFileSync(new URL('../fixtures/logs/lab-collector.jsonl', import.meta.url), 'utf8').trim().split('\n');
const [hairpin, , listed, staleNat] = lines as [string, string, string, string];
const ANSI = /\x1b\[[0-9;]*m/;

describe('renderLogLine', () => {
  it('renders a finding as a block: kind, node, Service, tuple, endpoint with its pod, evidence verbatim, advice', () => {
    const f = JSON.parse(staleNat) as { evidence: { raw: string }[]; advice: string };
    const text = renderLogLine(staleNat, { color: false });
    const out = text.split('\n');
    expect(out[0]).toBe('2026-11-22T12:23:55.107Z ERROR stale-nat-to-removed-endpoint  node-1  kube-system/kube-dns:dns');
    expect(out).toContain('  tuple     udp 198.19.1.10:41053 -> 198.18.64.53:53');
    expect(out).toContain('  endpoint  198.19.2.10:53 (pod kube-system/coredns-a)');
    // Each evidence line on a line of its own, exactly as the tool printed it.
    for (const e of f.evidence) expect(out).toContain(`      ${e.raw}`);
    expect(out).toContain(`  advice    ${f.advice}`);
    expect(text).not.toMatch(ANSI);
  });

  it('paints errors red and info cyan when colour is on, and the evidence stays free of escape codes', () => {
    const text = renderLogLine(hairpin, { color: true });
    expect(text.split('\n')[0]).toContain('\x1b[31mERROR\x1b[0m');
    const raw = (JSON.parse(hairpin) as { evidence: { raw: string }[] }).evidence[0]?.raw ?? '';
    expect(text.split('\n')).toContain(`      ${raw}`);
    expect(renderLogLine(listed, { color: true })).toContain('\x1b[36mINFO \x1b[0m');
  });

  it('paints warnings yellow', () => {
    const warn = '{"level":40,"time":"2026-11-22T12:00:00.000Z","component":"collector","msg":"no token configured: any agent or client can connect (set CONNTRAIL_TOKEN or --token-file)"}';
    expect(renderLogLine(warn, { color: true })).toContain('\x1b[33mWARN \x1b[0m');
    expect(renderLogLine(warn, { color: false })).toBe('2026-11-22T12:00:00.000Z WARN  no token configured: any agent or client can connect (set CONNTRAIL_TOKEN or --token-file) component=collector');
  });

  it('shows other lines as time, level, message and the remaining fields', () => {
    expect(renderLogLine(listed, { color: false })).toBe(
      '2026-11-22T12:23:45.861Z INFO  Kubernetes API: Services and EndpointSlices listed; watching component=collector kubernetes=https://127.0.0.1:39433 resources=["services","endpointslices"]',
    );
  });

  it.each([
    ['a half line', staleNat.slice(0, 120)],
    ['a line that is not JSON', 'Error from server (NotFound): deployments.apps "conntrail-collector" not found'],
    ['a JSON value that is not an object', '42'],
    ['an empty line', ''],
  ])('passes %s through unchanged', (_what, line) => {
    expect(renderLogLine(line, { color: true })).toBe(line);
  });
});

describe('wantColor', () => {
  it('colours a terminal unless NO_COLOR is set, and the flags decide over both', () => {
    expect(wantColor(undefined, { isTTY: true }, {})).toBe(true);
    expect(wantColor(undefined, { isTTY: false }, {})).toBe(false);
    expect(wantColor(undefined, { isTTY: true }, { NO_COLOR: '1' })).toBe(false);
    expect(wantColor(true, { isTTY: false }, { NO_COLOR: '1' })).toBe(true);
    expect(wantColor(false, { isTTY: true }, {})).toBe(false);
  });
});
