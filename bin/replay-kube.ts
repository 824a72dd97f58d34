// What the Kubernetes API said during a recorded timeline, for
// `conntrail replay DIR --kube KUBE_DIR`. The collector gets the API's view
// by listing Services and EndpointSlices and then following their watch
// events (collector/kube/watcher.ts); a recording is the same two things on
// disk, so they come out as the same KubeEvents a bundle's kubernetes.jsonl
// holds, and replay feeds them to the same KubeCatalog.
//
// Layout: KUBE_DIR/<time>/<file>.json (or .jsonl), <time> as for node steps
// (ISO 8601 or epoch milliseconds). Every file of a <time> directory is
// applied at that time, in file-name order. A file holds one or more JSON
// objects one after another (pretty-printed or one per line), each one of:
//   - a list: `kubectl get services,endpointslices,pods -A -o json` (kind
//     List), or the API's own ServiceList / EndpointSliceList. Like an
//     informer's relist, it is the whole state of the kinds it lists: an
//     object the recording had before and the list lacks was deleted. A
//     typed list covers its kind even when empty; a kubectl List covers the
//     kinds among its items.
//   - a watch event, as the API streams them (`kubectl get … --watch
//     --output-watch-events -o json` prints the same): {"type":
//     "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}.
//     BOOKMARK and ERROR change nothing (after an ERROR the informer relists:
//     record that list).
//   - one object (`kubectl get service web -o json`): it is now like this.
// Services (v1) and EndpointSlices (discovery.k8s.io/v1) are what the
// collector watches. Pods are accepted and not used: the collector names a
// pod from the EndpointSlice's targetRef. Any other kind, or an object the
// collector's decoders reject, is BAD_INPUT naming the file and the item:
// a recording that says something conntrail would not read is a mistake
// worth hearing about, not a gap to fill silently.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { KubeEvent } from '../collector/kube/catalog.ts';
import { decodeEndpointSlice, decodeService } from '../collector/kube/objects.ts';
import { ConntrailError } from '../contract/errors.ts';

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

type Watched = 'Service' | 'EndpointSlice';
const API_VERSION: Readonly<Record<Watched, string>> = { Service: 'v1', EndpointSlice: 'discovery.k8s.io/v1' };
const LIST_KIND: Readonly<Record<string, Watched | 'Pod'>> = { ServiceList: 'Service', EndpointSliceList: 'EndpointSlice', PodList: 'Pod' };

/** A step directory's name as a time: epoch milliseconds or ISO 8601 (as node steps are named). */
export function stampTime(stamp: string): number {
  return /^\d+$/.test(stamp) ? Number(stamp) : Date.parse(stamp);
}

const bad = (where: string, why: string): ConntrailError => new ConntrailError('BAD_INPUT', `${where}: ${why}`);

/**
 * The top-level JSON objects of a file, one after another: kubectl prints
 * watch events as indented JSON back to back, the API as one per line, and
 * JSON.parse reads only one value. Each is cut at its closing brace
 * (strings and escapes tracked), then JSON.parse decides whether it is JSON.
 */
export function jsonObjects(text: string, path: string): { value: unknown; line: number }[] {
  const out: { value: unknown; line: number }[] = [];
  let i = 0;
  // 1-based line of `start`, counted on as the scan goes (a watch stream can be long).
  let line = 1;
  let counted = 0;
  for (;;) {
    while (i < text.length && /\s/.test(text.charAt(i))) i++;
    if (i >= text.length) break;
    const start = i;
    for (; counted < start; counted++) if (text.charCodeAt(counted) === 10) line++;
    if (text.charAt(i) !== '{') throw bad(`${path}:${line}`, `expected a JSON object (a List, a watch event or a Kubernetes object), found ${JSON.stringify(text.slice(i, i + 20))}`);
    let depth = 0;
    let inString = false;
    let escaped = false;
    for (; i < text.length; i++) {
      const ch = text.charAt(i);
      if (inString) {
        if (escaped) escaped = false;
        else if (ch === '\\') escaped = true;
        else if (ch === '"') inString = false;
        continue;
      }
      if (ch === '"') inString = true;
      else if (ch === '{' || ch === '[') depth++;
      else if (ch === '}' || ch === ']') {
        depth--;
        if (depth === 0) {
          i++;
          break;
        }
      }
    }
    if (depth !== 0) throw bad(`${path}:${line}`, 'JSON object not closed before the end of the file');
    let value: unknown;
    try {
      value = JSON.parse(text.slice(start, i));
    } catch (err) {
      throw bad(`${path}:${line}`, `not JSON (${(err as Error).message})`);
    }
    out.push({ value, line });
  }
  if (out.length === 0) throw bad(path, 'empty: expected a List, watch events or a Kubernetes object');
  return out;
}

function serviceEvent(o: unknown, time: number, change: 'upsert' | 'delete'): KubeEvent | { error: string } {
  const d = decodeService(o);
  if (!d.ok) return { error: d.error };
  return change === 'upsert' ? { time, kind: 'service', service: d.value } : { time, kind: 'service-deleted', namespace: d.value.namespace, name: d.value.name };
}

function sliceEvent(o: unknown, time: number, change: 'upsert' | 'delete'): KubeEvent | { error: string } {
  const d = decodeEndpointSlice(o);
  if (!d.ok) return { error: d.error };
  return change === 'upsert' ? { time, kind: 'slice', slice: d.value } : { time, kind: 'slice-deleted', namespace: d.value.namespace, name: d.value.name };
}

/** Turns recorded API outputs into KubeEvents, tracking what exists so a list can say what was deleted. */
class Recording {
  readonly events: KubeEvent[] = [];
  readonly #present: Record<Watched, Set<string>> = { Service: new Set(), EndpointSlice: new Set() };

  /** An object from a list, an event or on its own; `kindHint` is the list's item kind. */
  #object(o: unknown, where: string, time: number, change: 'upsert' | 'delete', kindHint: Watched | 'Pod' | null): { kind: Watched; key: string } | null {
    if (!isObject(o)) throw bad(where, 'not a JSON object');
    const kind = typeof o.kind === 'string' ? o.kind : kindHint;
    if (kind === 'Pod') return null;
    if (kind !== 'Service' && kind !== 'EndpointSlice')
      throw bad(where, `${kind === null ? 'an object without kind' : `kind ${kind}`}: conntrail reads Services and EndpointSlices (Pods are accepted and not used); record them with \`kubectl get services,endpointslices -A -o json\``);
    if (typeof o.apiVersion === 'string' && o.apiVersion !== API_VERSION[kind]) throw bad(where, `${kind} ${o.apiVersion}: conntrail reads ${API_VERSION[kind]}, as the collector watches it`);
    const event = kind === 'Service' ? serviceEvent(o, time, change) : sliceEvent(o, time, change);
    if ('error' in event) throw bad(where, event.error);
    const key = event.kind === 'service' ? `${event.service.namespace}/${event.service.name}` : event.kind === 'slice' ? `${event.slice.namespace}/${event.slice.name}` : `${event.namespace}/${event.name}`;
    if (change === 'delete') this.#present[kind].delete(key);
    else this.#present[kind].add(key);
    this.events.push(event);
    return { kind, key };
  }

  #list(o: Json, kind: string, where: string, time: number): void {
    if (!Array.isArray(o.items)) throw bad(where, `${kind} without an items array`);
    const itemKind = LIST_KIND[kind] ?? null;
    if (kind !== 'List' && itemKind === null) throw bad(where, `${kind}: conntrail reads Services and EndpointSlices (Pods are accepted and not used)`);
    const covered = new Set<Watched>(itemKind === null || itemKind === 'Pod' ? [] : [itemKind]);
    const listed = new Set<string>();
    o.items.forEach((item: unknown, n: number) => {
      const seen = this.#object(item, `${where} items[${n}]`, time, 'upsert', itemKind);
      if (seen === null) return;
      covered.add(seen.kind);
      listed.add(`${seen.kind} ${seen.key}`);
    });
    for (const k of covered)
      for (const key of [...this.#present[k]]) {
        if (listed.has(`${k} ${key}`)) continue;
        const [namespace = '', name = ''] = key.split('/');
        this.#present[k].delete(key);
        this.events.push(k === 'Service' ? { time, kind: 'service-deleted', namespace, name } : { time, kind: 'slice-deleted', namespace, name });
      }
  }

  add(value: unknown, where: string, time: number): void {
    if (!isObject(value)) throw bad(where, 'not a JSON object');
    if (typeof value.type === 'string' && 'object' in value) {
      switch (value.type) {
        case 'ADDED':
        case 'MODIFIED':
          this.#object(value.object, `${where} (${value.type})`, time, 'upsert', null);
          return;
        case 'DELETED':
          this.#object(value.object, `${where} (DELETED)`, time, 'delete', null);
          return;
        case 'BOOKMARK':
        case 'ERROR':
          return;
        default:
          throw bad(where, `watch event type ${JSON.stringify(value.type)} (expected ADDED, MODIFIED, DELETED, BOOKMARK or ERROR)`);
      }
    }
    if (typeof value.kind === 'string' && value.kind.endsWith('List')) {
      this.#list(value, value.kind, where, time);
      return;
    }
    this.#object(value, where, time, 'upsert', null);
  }
}

/** A file-system call whose failure (permissions, a dangling link) is the recording's fault, said as BAD_INPUT naming the path. */
function fsAt<T>(path: string, what: string, read: () => T): T {
  try {
    return read();
  } catch (err) {
    throw new ConntrailError('BAD_INPUT', `${path}: cannot ${what} (${(err as Error).message})`, { cause: err });
  }
}

/** Reads a recorded API directory into KubeEvents, oldest first (events of one time keep file and file order). */
export function readKubeRecording(dir: string): KubeEvent[] {
  if (!fsAt(dir, 'read this recorded Kubernetes API directory', () => statSync(dir)).isDirectory()) throw bad(dir, 'not a directory of recorded Kubernetes API data');
  const steps: { time: number; dir: string }[] = [];
  for (const stamp of fsAt(dir, 'list it', () => readdirSync(dir))) {
    const stepDir = join(dir, stamp);
    const time = stampTime(stamp);
    if (Number.isNaN(time)) throw bad(stepDir, 'not a time (ISO 8601 or epoch milliseconds): an API recording holds only <time>/<file>.json');
    if (!fsAt(stepDir, 'read it', () => statSync(stepDir)).isDirectory()) throw bad(stepDir, 'not a directory: an API recording holds <time>/<file>.json');
    steps.push({ time, dir: stepDir });
  }
  if (steps.length === 0) throw bad(dir, 'holds no <time> directories');
  steps.sort((a, b) => a.time - b.time || a.dir.localeCompare(b.dir));
  const recording = new Recording();
  for (const step of steps) {
    const files = fsAt(step.dir, 'list it', () => readdirSync(step.dir)).sort();
    if (files.length === 0) throw bad(step.dir, 'holds no recorded API file');
    for (const f of files) {
      const path = join(step.dir, f);
      if (!/\.jsonl?$/.test(f) || !fsAt(path, 'read it', () => statSync(path)).isFile()) throw bad(path, 'not a .json or .jsonl file (record the API with `kubectl … -o json`)');
      const text = fsAt(path, 'read it', () => readFileSync(path, 'utf8'));
      for (const { value, line } of jsonObjects(text, path)) recording.add(value, `${path}:${line}`, step.time);
    }
  }
  return recording.events;
}
