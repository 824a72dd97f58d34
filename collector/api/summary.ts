// The readable live summary `conntrail local` prints: one block per node,
// one line per source. Counts come from the node's live state: a source's
// status is sent only when it changes, so its `records` is as of then.
import { isSourceName } from '../../contract/sources.ts';
import type { Collector } from '../receive/collector.ts';

export function renderSummary(collector: Collector, now: number): string {
  const lines: string[] = [];
  for (const view of collector.nodes.values()) {
    const age = view.lastSampleTime === null ? 'no sample yet' : `last sample ${((now - view.lastSampleTime) / 1000).toFixed(1)}s ago`;
    lines.push(`node ${view.name}  ${view.connected ? 'connected' : 'DISCONNECTED'}  seq ${view.lastSeq ?? '-'}  ${age}${view.facts ? `  kernel ${view.facts.kernel}` : ''}`);
    const statuses = [...view.statuses()].sort((a, b) => a.source.localeCompare(b.source));
    for (const s of statuses) {
      const detail =
        s.state === 'ok'
          ? `${String(isSourceName(s.source) ? view.recordMap(s.source).size : s.records).padStart(7)} records  ${s.durationMs.toFixed(0).padStart(4)} ms  ${s.via ?? ''}${s.problemCount > 0 ? `  (${s.problemCount} unreadable lines, first at line ${s.problems[0]?.line ?? '?'})` : ''}`
          : `${s.state}: ${s.reason ?? ''}`;
      lines.push(`  ${s.source.padEnd(14)} ${detail}`);
    }
  }
  return lines.length > 0 ? lines.join('\n') : 'waiting for the agent…';
}
