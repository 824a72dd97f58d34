// A full conntrack table drops new flows (`insert_failed`, `drop`,
// `early_drop` in /proc/net/stat/nf_conntrack), which looks exactly like an
// intermittent timeout from the client side.
import { iso, type Evidence, type Finding } from '../findings.ts';
import { sysctlLine, type Detector, type DetectorInput } from './input.ts';

const RISING = ['insert_failed', 'drop', 'early_drop'] as const;
const FULL_RATIO = 0.8;
const COUNT = 'net.netfilter.nf_conntrack_count';
const MAX = 'net.netfilter.nf_conntrack_max';

const ratioOf = (count: string | undefined, max: string | undefined): number | null =>
  count === undefined || max === undefined || !(Number(max) > 0) || !Number.isFinite(Number(count)) ? null : Number(count) / Number(max);

/** How full the table read before this step, when count or max moved in it; null when neither moved (nothing new to say). */
function before(input: DetectorInput, count: string | undefined, max: string | undefined): { ratio: number | null } | null {
  let [c, m, moved] = [count, max, false];
  for (const t of input.transitions) {
    if (t.source !== 'sysctl' || (t.kind !== 'added' && t.kind !== 'changed')) continue;
    const name = t.after.name;
    if (name !== COUNT && name !== MAX) continue;
    moved = true;
    // First read of either: there was no "before" to compare with.
    if (t.kind === 'added') return { ratio: null };
    if (name === COUNT) c = t.before.value;
    else m = t.before.value;
  }
  return moved ? { ratio: ratioOf(c, m) } : null;
}

export const detectConntrackPressure: Detector = (input) => {
  const evidence: Evidence[] = [];
  const rises: Record<string, number> = {};
  for (const t of input.transitions) {
    // A row read for the first time (a snapshot, a CPU coming online) holds totals since boot, not a rise.
    if (t.source !== 'conntrack-stat' || t.kind !== 'refreshed') continue;
    const { before: b, after: a } = t;
    let rose = false;
    for (const k of RISING) {
      // A counter reading lower has wrapped or been reset: not a rise.
      const d = (a.counters[k] ?? 0) - (b.counters[k] ?? 0);
      if (d > 0) {
        rises[k] = (rises[k] ?? 0) + d;
        rose = true;
      }
    }
    // The rise is the difference of two rows: quote both, each at the sample it was read in.
    if (rose) evidence.push({ source: 'conntrack-stat', node: input.node, time: iso(t.beforeAt), raw: b.raw }, { source: 'conntrack-stat', node: input.node, time: iso(input.time), raw: a.raw });
  }
  const count = sysctlLine(input, COUNT);
  const max = sysctlLine(input, MAX);
  const ratio = ratioOf(count?.value, max?.value);
  const full = ratio !== null && ratio >= FULL_RATIO;
  const rising = Object.keys(rises).length > 0;
  if (!full && !rising) return [];
  // Fullness alone is reported when the table crosses the mark (or is first read past it), not at every count that moves while it stays there.
  const prev = before(input, count?.value, max?.value);
  const fullIsNew = full && prev !== null && (prev.ratio === null || prev.ratio < FULL_RATIO);
  if (!rising && !fullIsNew) return [];
  if (count) evidence.push({ source: 'sysctl', node: input.node, time: iso(input.readAt('sysctl', count.name) ?? input.time), raw: count.raw });
  if (max) evidence.push({ source: 'sysctl', node: input.node, time: iso(input.readAt('sysctl', max.name) ?? input.time), raw: max.raw });
  const table = ratio === null ? null : `${Math.round(ratio * 100)}% full`;
  const finding: Finding = {
    finding: 'conntrack-pressure',
    severity: rising ? 'error' : 'warning',
    node: input.node,
    service: null,
    tuple: null,
    endpoint: null,
    summary: rising
      ? `conntrack is dropping flows on ${input.node}: ${Object.entries(rises).map(([k, v]) => `${k} +${v}`).join(', ')} since the last sample${table === null ? '' : ` (table ${table})`}`
      : `the conntrack table on ${input.node} is ${table ?? ''} (${count?.value}/${max?.value})`,
    evidence,
    advice:
      'Raise net.netfilter.nf_conntrack_max (kube-proxy sets it from --conntrack-max-per-core / conntrack.maxPerCore), shorten net.netfilter.nf_conntrack_tcp_timeout_time_wait and the UDP timeouts, or find the client opening flows at this rate; insert_failed rising without a full table points at the SNAT port race instead (use MASQUERADE --random-fully).',
    time: input.time,
    details: { count: count ? Number(count.value) : null, max: max ? Number(max.value) : null, ...rises },
  };
  return [finding];
};
