// Every parser by source name, for `conntrail parse` and tests: read off the
// registry, where each source is declared.
import type { ParseResult, RecordOf, SourceName } from '../contract/sources.ts';
import { registry } from './sources/registry.ts';

export type Parsers = { readonly [N in SourceName]: (text: string) => ParseResult<RecordOf<N>> };

// Object.fromEntries cannot carry the per-key types; the registry's mapped
// type already pairs each name with its own parser, so the pairing holds.
export const parsers = Object.fromEntries(Object.values(registry).map((d) => [d.name, d.parse])) as Parsers;
