// A full conntrack table drops new flows (`insert_failed`, `drop`,
// `early_drop` in /proc/net/stat/nf_conntrack), which looks exactly like an
// intermittent timeout from the client side.
import { iso, type Evidence, type Finding } from '../findings.ts';
import { sysctlLine, type Detector } from './input.ts';

const RISING = ['insert_failed', 'drop', 'early_drop'] as const;
const FULL_RATIO = 0.8;

export const detectConntrackPressure: Detector = (input) => {
  const evidence: Evidence[] = [];
  const rises: Record<string, number> = {};
  for (const t of input.transitions) {
    if (t.source !== 'conntrack-stat' || t.kind !== 'refreshed') continue;
    const { before: b, after: a } = t;
    let rose = false;
    for (const k of RISING) {
      const d = (a.counters[k] ?? 0) - (b.counters[k] ?? 0);
      if (d > 0) {
        rises[k] = (rises[k] ?? 0) + d;
        rose = true;
      }
    }
    if (rose) evidence.push({ source: 'conntrack-stat', node: input.node, time: iso(input.time), raw: a.raw });
  }
  const count = sysctlLine(input, 'net.netfilter.nf_conntrack_count');
  const max = sysctlLine(input, 'net.netfilter.nf_conntrack_max');
  const ratio = count && max && Number(max.value) > 0 ? Number(count.value) / Number(max.value) : 0;
  const full = ratio >= FULL_RATIO;
  const rising = Object.keys(rises).length > 0;
  if (!full && !rising) return [];
  // Only report fullness when it is new this step, or drops are happening now.
  const fullIsNew = input.transitions.some((t) => t.source === 'sysctl' && t.after?.name === 'net.netfilter.nf_conntrack_count');
  if (!rising && !fullIsNew) return [];
  if (count) evidence.push({ source: 'sysctl', node: input.node, time: iso(input.readAt('sysctl', count.name) ?? input.time), raw: count.raw });
  if (max) evidence.push({ source: 'sysctl', node: input.node, time: iso(input.readAt('sysctl', max.name) ?? input.time), raw: max.raw });
  const finding: Finding = {
    finding: 'conntrack-pressure',
    severity: rising ? 'error' : 'warning',
    node: input.node,
    service: null,
    tuple: null,
    endpoint: null,
    summary: rising
      ? `conntrack is dropping flows on ${input.node}: ${Object.entries(rises).map(([k, v]) => `${k} +${v}`).join(', ')} since the last sample (table ${Math.round(ratio * 100)}% full)`
      : `the conntrack table on ${input.node} is ${Math.round(ratio * 100)}% full (${count?.value}/${max?.value})`,
    evidence,
    advice:
      'Raise net.netfilter.nf_conntrack_max (kube-proxy sets it from --conntrack-max-per-core / conntrack.maxPerCore), shorten net.netfilter.nf_conntrack_tcp_timeout_time_wait and the UDP timeouts, or find the client opening flows at this rate; insert_failed rising without a full table points at the SNAT port race instead (use MASQUERADE --random-fully).',
    time: input.time,
    details: { count: count ? Number(count.value) : null, max: max ? Number(max.value) : null, ...rises },
  };
  return [finding];
};
