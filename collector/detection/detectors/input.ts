// What every detector sees: one node at one applied step, read-only. The
// detection stage updates its derived state (Services, endpoint history,
// pending SYNs, step times) once, before any detector runs; detectors are
// pure functions of this index, so the collector, `local`, `replay`,
// `doctor`, bundles and tests run the same code on the same facts.
import type { RecordOf, SourceName } from '../../../contract/sources.ts';
import type { Sysctl } from '../../../contract/records.ts';
import type { EndpointTimeline } from '../endpoint-history.ts';
import type { KubeView } from '../../kube/catalog.ts';
import type { PendingSyn } from '../pending-syns.ts';
import type { Finding } from '../findings.ts';
import type { Transition } from '../../state/node-view.ts';
import type { ProgrammedService } from '../services.ts';

export interface NodeIndex {
  readonly node: string;
  /** Sample time of this step, and of the step before it (null for the first). */
  readonly time: number;
  readonly prevTime: number | null;
  /** This step is a snapshot: what exists, not what just moved. */
  readonly snapshot: boolean;
  readonly transitions: readonly Transition[];
  /** State after this step. */
  records<N extends SourceName>(source: N): ReadonlyMap<string, RecordOf<N>>;
  /** The sample time at which a record's current value (its `raw` as held) was read. */
  readAt(source: SourceName, key: string): number | null;
  /** Sample time of this node's first step: what was not there then had left before. */
  readonly watchedSince: number;
  /** Steps applied strictly after `time`, up to and including this one. */
  stepsSince(time: number): number;
  readonly endpoints: EndpointTimeline;
  /**
   * Conntrack entries still waiting for a SYN-ACK that were first read
   * unanswered after `after` (null: at any time) and at or before `upTo`,
   * oldest first. Their current line is in `records('conntrack')`.
   */
  pendingSyns(after: number | null, upTo: number): readonly PendingSyn[];
  /** The Kubernetes API's view (Service specs, EndpointSlices), or null without API access. */
  readonly kube: KubeView | null;
  /** Kernel release from node facts, else from kernel.osrelease. */
  readonly kernel: string | null;
}

/** Kept for the detectors' signatures: the index is their whole input. */
export type DetectorInput = NodeIndex;

export type Detector = (index: NodeIndex) => Finding[];

export function sysctlLine(input: NodeIndex, name: string): Sysctl | undefined {
  return input.records('sysctl').get(name);
}

/** The Service a client reached at address:port: a frontend (ClusterIP, LB, external, IPVS virtual) or a NodePort. */
export function serviceAt(services: readonly ProgrammedService[], address: string, port: number, protocol: string): ProgrammedService | undefined {
  const proto = protocol.toLowerCase();
  const sameProto = (s: ProgrammedService) => s.protocol === '' || s.protocol.toLowerCase() === proto;
  return (
    services.find((s) => sameProto(s) && s.frontends.some((f) => f.address === address && f.port === port)) ??
    services.find((s) => sameProto(s) && s.nodePorts.includes(port))
  );
}

/** `4.19.91-24.al7.x86_64` < `5.9`, compared the way kube-proxy does: by version string. */
export function kernelAtLeast(kernel: string | null, major: number, minor: number): boolean | null {
  const m = kernel === null ? null : /^(\d+)\.(\d+)/.exec(kernel);
  if (m === null) return null;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > major || (maj === major && min >= minor);
}
