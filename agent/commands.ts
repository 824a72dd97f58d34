// Every external command conntrail runs on a node, and why. The container
// image must install each of them (test/deploy/dockerfile.test.ts checks the
// Dockerfile against this list, and this list against the call sites). The
// sources' commands are read off the registry; capture's are its own.
import { allReads } from './sources/registry.ts';

export interface NodeCommand {
  readonly name: string;
  readonly why: string;
}

/** What agent/capture.ts runs while an incident is open. */
const CAPTURE_COMMANDS: readonly NodeCommand[] = [
  { name: 'tcpdump', why: "capture of an incident's packets" },
  { name: 'conntrack', why: 'conntrack -E during a capture' },
];

function nodeCommands(): NodeCommand[] {
  const whys = new Map<string, string[]>();
  const add = (name: string, why: string): void => {
    const list = whys.get(name) ?? [];
    if (!list.includes(why)) list.push(why);
    whys.set(name, list);
  };
  for (const { read } of allReads()) if (read.kind === 'command' && read.argv[0] !== undefined) add(read.argv[0], read.why);
  for (const c of CAPTURE_COMMANDS) add(c.name, c.why);
  return [...whys].map(([name, list]) => ({ name, why: list.join('; ') }));
}

export const NODE_COMMANDS: readonly NodeCommand[] = nodeCommands();
