// A HostIO that serves recorded outputs instead of touching the node: what
// `replay` and tests feed the real samplers, so recorded timelines take the
// live code path. Anything not recorded behaves like a node without it.
import { ConntrailError } from '../contract/errors.ts';
import type { HostIO } from './host-io.ts';

/** Keys are a command line (`ipvsadm -Lnc`) or a file path (`/proc/net/nf_conntrack`). */
export type Recording = ReadonlyMap<string, string>;

export function createRecordedIO(current: () => Recording, now: () => number = Date.now): HostIO {
  return {
    now,
    run(argv) {
      const text = current().get(argv.join(' '));
      if (text === undefined) return Promise.reject(new ConntrailError('TOOL_MISSING', `${argv[0] ?? ''} was not recorded`));
      return Promise.resolve({ stdout: text, stderr: '' });
    },
    readFile(path) {
      const text = current().get(path);
      if (text === undefined) return Promise.reject(new ConntrailError('SOURCE_UNAVAILABLE', `${path} was not recorded`));
      return Promise.resolve(text);
    },
    readFileWith(path, consume) {
      return this.readFile(path).then((t) => consume(Buffer.from(t, 'latin1')));
    },
    readLinesWith(path, consume) {
      return this.readFile(path).then((t) => consume(Buffer.from(t, 'latin1')));
    },
    readKmsg(path) {
      return this.readFile(path);
    },
    listDir(path) {
      const prefix = path.endsWith('/') ? path : `${path}/`;
      const names = new Set<string>();
      for (const k of current().keys()) if (k.startsWith(prefix)) names.add(k.slice(prefix.length).split('/')[0] ?? '');
      names.delete('');
      return Promise.resolve([...names]);
    },
  };
}
