// A real collector, with detection and incidents, fed a recorded timeline
// through in-process agents: a collector that "lived through" a rollout.
import { NodeState } from '../../agent/node-state.ts';
import { createRecordedIO } from '../../agent/recorded-io.ts';
import { createSamplers } from '../../agent/samplers.ts';
import { InProcessAgent } from '../../bin/in-process.ts';
import { readTimeline } from '../../bin/replay.ts';
import { BundleService } from '../../collector/incidents/bundle-service.ts';
import { Collector } from '../../collector/receive/collector.ts';
import { Detection } from '../../collector/detection/detection.ts';
import { captureLog } from './capture-log.ts';

/** A collector that lived through seed 002's rollout, with incidents opened by its findings. */
export async function collectorThrough(dir: string): Promise<{ service: BundleService }> {
  const { log } = captureLog();
  let clock = 0;
  const collector = new Collector({ log, now: () => clock });
  const service = new BundleService(collector, log, { version: 'test' });
  new Detection((line) => service.incidents.add(line)).watch(collector);
  for (const [node, steps] of readTimeline(dir)) {
    const files = new Map<string, string>();
    const recording = () => {
      const rec = new Map<string, string>();
      for (const [f, t] of files) if (f === 'ipvsadm-Ln.txt') rec.set('ipvsadm -Ln', t);
        else if (f === 'ipvsadm-Lnc.txt') rec.set('ipvsadm -Lnc', t);
        else if (f === 'nf_conntrack.txt') rec.set('/proc/net/nf_conntrack', t);
      rec.set('/proc/sys/net/ipv4/vs/conn_reuse_mode', '0\n');
      return rec;
    };
    const agent = new InProcessAgent(node, new NodeState(createSamplers(), createRecordedIO(recording, () => clock), () => clock), collector);
    for (const step of steps) {
      clock = step.time;
      for (const [f, t] of step.files) files.set(f, t);
      await agent.step(step.time);
    }
  }
  return { service };
}

