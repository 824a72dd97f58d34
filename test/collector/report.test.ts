// A bundle's report.html, rendered by headless Chromium (Debian's package,
// installed by `npm run setup`) and looked at: the Service's endpoint bars
// and the finding's marker must be on the screen, not a blank page.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { readBundle } from '../../collector/incidents/bundle.ts';
import { decodePng } from '../helpers/png.ts';
import { collectorThrough } from '../helpers/timeline-collector.ts';

const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';

function countColor(png: ReturnType<typeof decodePng>, rgb: [number, number, number]): number {
  let n = 0;
  for (let y = 0; y < png.height; y++)
    for (let x = 0; x < png.width; x++) {
      const [r, g, b] = png.pixel(x, y);
      if (Math.abs(r - rgb[0]) < 12 && Math.abs(g - rgb[1]) < 12 && Math.abs(b - rgb[2]) < 12) n++;
    }
  return n;
}

describe('report.html', () => {
  it('renders the Service timeline and the finding in headless Chromium, with no network', async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: install Debian's chromium package (npm run setup does)`);
    const timelines = new URL('../fixtures/timelines/', import.meta.url).pathname;
    const { service } = await collectorThrough(join(timelines, 'seed-002-reuse-to-removed-endpoint'));
    const id = String(service.list()[0]?.id);
    const dir = mkdtempSync(join(tmpdir(), 'report-test-'));
    writeFileSync(join(dir, 'b.tar.gz'), (await service.incidentBundle(id)) as Buffer);
    const { files } = await readBundle(join(dir, 'b.tar.gz'));
    const html = files.get('report.html') ?? '';
    // Self-contained: nothing to fetch.
    expect(html).not.toMatch(/\b(src|href)=["']?https?:/);
    expect(html).toContain('TCP 10.20.79.226:31199');
    writeFileSync(join(dir, 'report.html'), html);
    const shot = join(dir, 'shot.png');
    await run(CHROMIUM, [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', `--user-data-dir=${join(dir, 'profile')}`, '--hide-scrollbars',
      '--window-size=1100,900', `--screenshot=${shot}`, `file://${join(dir, 'report.html')}`,
    ], { timeout: 60_000 });
    if (process.env.CONNTRAIL_KEEP_SHOT) writeFileSync(process.env.CONNTRAIL_KEEP_SHOT, readFileSync(shot));
    const png = decodePng(readFileSync(shot));
    expect(png.width).toBe(1100);
    // Endpoint bars (serving green, draining amber) and the error marker (red) are painted.
    expect(countColor(png, [0x2e, 0x7d, 0x32])).toBeGreaterThan(500);
    expect(countColor(png, [0xf9, 0xa8, 0x25])).toBeGreaterThan(50);
    expect(countColor(png, [0xd3, 0x2f, 0x2f])).toBeGreaterThan(100);
  }, 90_000);
});
