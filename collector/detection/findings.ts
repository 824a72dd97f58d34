// A finding is one log line a person can act on: a stable kind, where it
// happened (node, Service, tuple, endpoint), the evidence lines verbatim as
// the tools printed them, and concrete advice with the reference it rests on.
import type { SourceName } from '../../contract/sources.ts';

export type FindingKind =
  | 'port-reuse-to-removed-endpoint'
  | 'stale-nat-to-removed-endpoint'
  | 'lb-hairpin'
  | 'lb-healthcheck-dropped'
  | 'conntrack-pressure'
  | 'unanswered-syn';

export type Severity = 'error' | 'warning';

export interface Tuple {
  readonly proto: string;
  readonly src: string;
  readonly sport: number | null;
  readonly dst: string;
  readonly dport: number | null;
}

export interface Evidence {
  readonly source: SourceName | 'kubernetes';
  readonly node: string;
  /** ISO time of the sample the line was read in. */
  readonly time: string;
  readonly raw: string;
}

export interface Finding {
  readonly finding: FindingKind;
  readonly severity: Severity;
  readonly node: string;
  readonly service: string | null;
  readonly tuple: Tuple | null;
  readonly endpoint: string | null;
  /** The pod behind `endpoint` (`namespace/name`), from the Kubernetes API's EndpointSlices; absent without API access. */
  readonly pod?: string | null;
  /** The pod behind the tuple's source address, when it is one. */
  readonly clientPod?: string | null;
  /** A sentence saying what happened, in plain words. */
  readonly summary: string;
  readonly evidence: readonly Evidence[];
  readonly advice: string;
  /** Milliseconds since the epoch of the sample that showed it. */
  readonly time: number;
  /** Extra facts specific to the kind (conn_reuse_mode, kernel, counters …). */
  readonly details?: Readonly<Record<string, string | number | boolean | null>>;
}

export const iso = (ms: number): string => new Date(ms).toISOString();

export const tupleText = (t: Tuple): string => `${t.proto} ${t.src}:${t.sport ?? '-'} -> ${t.dst}:${t.dport ?? '-'}`;
