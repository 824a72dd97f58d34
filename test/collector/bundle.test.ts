import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { replay } from '../../bin/replay.ts';
import { bundleTimelines, readBundle } from '../../collector/incidents/bundle.ts';
import { captureLog } from '../helpers/capture-log.ts';
import { collectorThrough } from '../helpers/timeline-collector.ts';
import { saveBundle } from '../helpers/save-bundle.ts';

const timelines = new URL('../fixtures/timelines/', import.meta.url).pathname;

describe('incident bundles', () => {
  it('an error finding opens an incident whose bundle replays to exactly its findings.jsonl, with a readable summary', async () => {
    const { service } = await collectorThrough(join(timelines, 'seed-002-reuse-to-removed-endpoint'));
    const [incident] = service.list();
    expect(incident).toMatchObject({ service: 'TCP 10.20.79.226:31199', nodes: ['cn-beijing.10.20.79.226'], kinds: ['port-reuse-to-removed-endpoint'] });
    const file = await saveBundle(await service.incidentBundle(String(incident?.id)), join(mkdtempSync(join(tmpdir(), 'bundle-test-')), 'b.tar.gz'));

    const { manifest, files } = await readBundle(file);
    expect(manifest).toMatchObject({ format: 1, incident: incident?.id, nodes: ['cn-beijing.10.20.79.226'] });
    const stored = (files.get('findings.jsonl') ?? '').trim().split('\n').map((l) => JSON.parse(l) as unknown);
    expect(stored).toHaveLength(1);
    const { log } = captureLog();
    expect(JSON.parse(JSON.stringify(await replay(file, log)))).toEqual(stored);

    const summary = files.get('summary.md') ?? '';
    expect(summary).toContain('cn-beijing.10.20.79.226');
    expect(summary).toContain('tcp 10.23.31.87:58578 -> 10.20.79.226:31199');
    expect(summary).toContain('10.27.1.249:80');
    expect(summary).toContain('TCP 00:59  SYN_RECV    10.23.31.87:58578  10.20.79.226:31199 10.27.1.249:80');
    expect(files.get('snapshots/cn-beijing.10.20.79.226/ipvs-conn.txt')).toContain('TIME_WAIT   10.23.31.87:58578');
    const timeline = bundleTimelines(files)[0];
    expect(timeline?.entries[0]?.kind).toBe('snapshot');
    for (const [p, meta] of Object.entries(manifest.files as Record<string, { sha256: string }>))
      expect(meta.sha256, p).toMatch(/^[0-9a-f]{64}$/);
    expect(readFileSync(file).subarray(0, 2)).toEqual(Buffer.from([0x1f, 0x8b]));
  });

  it('a warning alone opens no incident', async () => {
    const { service } = await collectorThrough(join(timelines, 'seed-002-reuse-to-terminating-endpoint'));
    expect(service.list()).toEqual([]);
  });
});
