// `conntrail services [STEP_DIR] [--json]`: the Services kube-proxy has
// programmed on this node, read back from its rules exactly as the
// detectors see them (same samplers, same parsers, same model). With
// STEP_DIR, from saved outputs named as in a replay step (iptables-save.txt,
// nft.json, ipvsadm-Ln.txt, ipset-save.txt, ip-addr.txt …) instead.
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { createHostIO, type HostIO } from '../agent/host-io.ts';
import { createRecordedIO } from '../agent/recorded-io.ts';
import { createSamplers, type Sample } from '../agent/samplers.ts';
import { describeServices, programmedServices, type ProgrammedService } from '../collector/detection/services.ts';
import { ConntrailError, isConntrailError } from '../contract/errors.ts';
import type { RecordOf, SourceName } from '../contract/sources.ts';
import { RECORDED_FILES } from './replay.ts';

const MODEL_SOURCES = new Set<SourceName>(['iptables', 'nft', 'ipvs', 'ipset', 'addrs']);

export interface ServicesRead {
  readonly services: ProgrammedService[];
  /** Sources that could not be read, and why (a node without IPVS, a missing recording). */
  readonly unavailable: readonly { source: SourceName; reason: string }[];
}

/** Reads the rule sources once through the agent's samplers and builds the Service model. */
export async function readServices(io: HostIO): Promise<ServicesRead> {
  const records: { [N in SourceName]?: RecordOf<N>[] } = {};
  const unavailable: { source: SourceName; reason: string }[] = [];
  for (const sampler of createSamplers()) {
    if (!MODEL_SOURCES.has(sampler.source)) continue;
    let sample: Sample<SourceName>;
    try {
      sample = await sampler.sample(io);
    } catch (err) {
      if (isConntrailError(err)) {
        unavailable.push({ source: sampler.source, reason: err.message });
        continue;
      }
      throw err;
    }
    setRecords(records, sample);
  }
  const services = programmedServices({
    iptables: records.iptables ?? [],
    nft: records.nft ?? [],
    ipvs: records.ipvs ?? [],
    ipset: (records.ipset ?? []).flatMap((r) => (r.kind === 'member' ? [r] : [])),
    addrs: records.addrs ?? [],
  });
  return { services, unavailable };
}

function setRecords<N extends SourceName>(into: { [K in SourceName]?: RecordOf<K>[] }, sample: Sample<N>): void {
  (into as { [K in N]?: RecordOf<K>[] })[sample.source] = [...sample.records];
}

/** A directory of saved outputs, one file per source, named as in a replay step. */
export function recordedStepIO(dir: string): HostIO {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new ConntrailError('BAD_INPUT', `${dir} is not a directory`);
  const rec = new Map<string, string>();
  const known = Object.keys(RECORDED_FILES);
  for (const f of readdirSync(dir)) {
    const key = RECORDED_FILES[f];
    if (key === undefined) continue;
    rec.set(key, readFileSync(join(dir, f), 'utf8'));
  }
  if (rec.size === 0) throw new ConntrailError('BAD_INPUT', `${dir} holds none of the recorded files (${known.join(', ')})`);
  return createRecordedIO(() => rec);
}

export function liveIO(): HostIO {
  return createHostIO();
}

/** A table for people: one Service per block, frontends with their kind, endpoints with their state. */
export function renderServices(read: ServicesRead): string {
  const out: string[] = [];
  if (read.services.length === 0) out.push('no kube-proxy Services found in this node\'s rules');
  for (const s of read.services) {
    out.push(`${s.id}  ${s.protocol || '?'}  (${s.mode}${s.localTrafficPolicy ? ', externalTrafficPolicy Local' : ''})`);
    for (const f of s.frontends) out.push(`  ${f.kind.padEnd(12)} ${f.address}:${f.port}${f.local ? '  local' : ''}`);
    if (s.nodePorts.length > 0) out.push(`  ${'nodeport'.padEnd(12)} ${s.nodePorts.join(', ')}`);
    if (s.healthCheckNodePort !== null) out.push(`  ${'healthcheck'.padEnd(12)} ${s.healthCheckNodePort}`);
    if (s.endpoints.length === 0) out.push('  -> no endpoints');
    for (const e of s.endpoints) out.push(`  -> ${e.address}:${e.port}${e.terminating ? '  terminating' : ''}`);
  }
  for (const u of read.unavailable) out.push(`(${u.source} not read: ${u.reason})`);
  return `${out.join('\n')}\n`;
}

export const servicesJson = (read: ServicesRead): string => `${JSON.stringify(describeServices(read.services), null, 2)}\n`;
