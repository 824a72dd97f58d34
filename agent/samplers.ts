// A sampler is a read (through HostIO) plus a pure parser. The same samplers
// run live, in `conntrail replay` (HostIO serving recorded outputs) and in
// tests, so recorded IPVS timelines go through exactly the live code path.
// What each source reads and how is declared once, in agent/sources/registry.ts;
// the ways of sampling (one output, several families, fallbacks) are in
// agent/sampling.ts. This module holds the shapes they share.
import type { Diff } from '../contract/diff.ts';
import type { Problem, RecordOf, SourceName, SourceSpec } from '../contract/sources.ts';
import type { HostIO } from './host-io.ts';
import { registry } from './sources/registry.ts';

/** One verbatim output a sample was made from: what a bundle stores and `replay` reads. */
export interface Reading {
  readonly via: string;
  /** null for a source too large to keep a copy of (conntrack). */
  readonly text: string | null;
}

export interface Sample<N extends SourceName> {
  readonly source: N;
  readonly readings: readonly Reading[];
  readonly records: readonly RecordOf<N>[];
  readonly problems: readonly Problem[];
  /** Set by a source kept compact on the agent (conntrack): records are then empty. */
  readonly compact?: Compact<N>;
}

/**
 * A source the agent keeps in its own compact form, diffed with its own spec
 * (the same generic diff) and expanded into contract records only when sent.
 */
export interface Compact<N extends SourceName> {
  readonly keyed: ReadonlyMap<string, unknown>;
  /**
   * The source's own diff against its previous read, when it keeps `keyed` in
   * place (conntrack). Made only when called, before the next sample: a tick
   * that ends in a snapshot never asks for it.
   */
  readonly diff?: () => Diff<unknown>;
  /** The source lost track of what it reported (a read failed half way): resynchronise rather than send `diff`. */
  readonly restarted?: boolean;
  readonly spec: SourceSpec<unknown>;
  expand(kept: unknown): RecordOf<N> | null;
}

export interface Sampler<N extends SourceName = SourceName> {
  readonly source: N;
  /** Rejects with a ConntrailError: TOOL_MISSING / SOURCE_UNAVAILABLE (skip this source) or SOURCE_FAILED (this tick only). */
  sample(io: HostIO): Promise<Sample<N>>;
}

/**
 * One thing a source reads on the node. `recorded` is its file name in a
 * replay step (bin/replay.ts); null when a recording never reaches it, because
 * the file of the read tried before it stands for it (`iptables-save -c` is
 * tried only where `iptables-nft-save` is missing, and a recorded
 * `iptables-save.txt` answers for the first choice).
 */
export type Read = CommandRead | FileRead | SysctlRead;

export interface CommandRead {
  readonly kind: 'command';
  /** Run without a shell, exactly so. */
  readonly argv: readonly string[];
  /** Why the agent runs it: agent/commands.ts lists it, and the image must install it. */
  readonly why: string;
  readonly recorded: string | null;
}

export interface FileRead {
  readonly kind: 'file';
  readonly path: string;
  readonly recorded: string | null;
}

/** Knobs under /proc/sys, one file each; recorded as one `sysctl -a` text, each line becoming its file. */
export interface SysctlRead {
  readonly kind: 'sysctl';
  readonly root: '/proc/sys';
  readonly recorded: string;
}

/** A fresh sampler per source, in the registry's order (conntrack's keeps a cache: one per NodeState). */
export function createSamplers(): Sampler[] {
  return Object.values(registry).map((d) => d.sampler());
}
