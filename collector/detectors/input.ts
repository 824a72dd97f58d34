// What every detector sees: one node, one applied step. Detectors are pure
// functions of this, so the collector, `replay` and tests run the same code.
import type { RecordOf, SourceName } from '../../contract/sources.ts';
import type { Sysctl } from '../../contract/records.ts';
import type { EndpointHistory } from '../endpoint-history.ts';
import type { KubeView } from '../kube/catalog.ts';
import type { PendingSyns } from '../pending-syns.ts';
import type { RecentActivity } from '../recent-activity.ts';
import type { Finding } from '../findings.ts';
import type { Transition } from '../node-view.ts';
import type { ProgrammedService } from '../services.ts';

export interface DetectorInput {
  readonly node: string;
  /** Sample time of this step, and of the step before it (null for the first). */
  readonly time: number;
  readonly prevTime: number | null;
  readonly transitions: readonly Transition[];
  /** State after this step. */
  records<N extends SourceName>(source: N): ReadonlyMap<string, RecordOf<N>>;
  readonly endpoints: EndpointHistory;
  /** Conntrack entries still waiting for a SYN-ACK, and since when. */
  readonly pendingSyns: PendingSyns;
  /** Conntrack entries that moved in the last few seconds. */
  readonly recentActivity: RecentActivity;
  /** The Kubernetes API's view (Service specs, EndpointSlices), or null without API access. */
  readonly kube: KubeView | null;
  /** Kernel release from node facts, else from kernel.osrelease. */
  readonly kernel: string | null;
}

export type Detector = (input: DetectorInput) => Finding[];

export function sysctlLine(input: DetectorInput, name: string): Sysctl | undefined {
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
