// Writes a packed bundle's stream to `file`, as the API streams it to a client; the bundle's own temp dir goes when the stream closes.
import { createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { PackedBundle } from '../../collector/incidents/bundle.ts';

export async function saveBundle(bundle: PackedBundle | null, file: string): Promise<string> {
  if (bundle === null) throw new Error('no bundle: the incident is not known');
  await pipeline(bundle.stream, createWriteStream(file));
  return file;
}
