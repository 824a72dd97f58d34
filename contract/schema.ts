// A tiny runtime schema: one definition gives both the TypeScript type and the
// decoder used at the collector's trust boundary. The contract must import
// nothing from npm (agent and collector both depend on it), hence no zod.

export type Decoded<T> = { readonly ok: true; readonly value: T } | { readonly ok: false; readonly error: string };

export interface Schema<T> {
  readonly describe: string;
  decode(input: unknown, path: string): Decoded<T>;
}

export type Infer<S> = S extends Schema<infer T> ? T : never;

const ok = <T>(value: T): Decoded<T> => ({ ok: true, value });
const fail = <T>(path: string, expected: string, got: unknown): Decoded<T> => ({
  ok: false,
  error: `${path || '<root>'}: expected ${expected}, got ${describeValue(got)}`,
});

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)}`;
  return typeof v;
}

/** No field of any record comes near this; a longer string is an attack or a bug, and would end up in logs and heaps. */
export const MAX_STRING = 1024 * 1024;

/** A string of at most `max` UTF-16 units. */
export function boundedStr(max: number): Schema<string> {
  return {
    describe: `string (at most ${max} characters)`,
    decode: (v, p) => (typeof v !== 'string' ? fail(p, 'string', v) : v.length > max ? { ok: false, error: `${p || '<root>'}: string longer than ${max} characters` } : ok(v)),
  };
}

export const str: Schema<string> = boundedStr(MAX_STRING);

export const num: Schema<number> = {
  describe: 'number',
  decode: (v, p) => (typeof v === 'number' && Number.isFinite(v) ? ok(v) : fail(p, 'finite number', v)),
};

export const int: Schema<number> = {
  describe: 'integer',
  decode: (v, p) => (typeof v === 'number' && Number.isSafeInteger(v) ? ok(v) : fail(p, 'integer', v)),
};

export const bool: Schema<boolean> = {
  describe: 'boolean',
  decode: (v, p) => (typeof v === 'boolean' ? ok(v) : fail(p, 'boolean', v)),
};

export function literal<const L extends string | number>(...values: readonly L[]): Schema<L> {
  const describe = values.map((x) => JSON.stringify(x)).join(' | ');
  return {
    describe,
    decode: (v, p) => ((values as readonly unknown[]).includes(v) ? ok(v as L) : fail(p, describe, v)),
  };
}

export function nullable<T>(inner: Schema<T>): Schema<T | null> {
  return {
    describe: `${inner.describe} | null`,
    decode: (v, p) => (v === null ? ok(null) : inner.decode(v, p)),
  };
}

export function array<T>(inner: Schema<T>, maxLength = Number.MAX_SAFE_INTEGER): Schema<readonly T[]> {
  return {
    describe: `${inner.describe}[]`,
    decode(v, p) {
      if (!Array.isArray(v)) return fail(p, 'array', v);
      if (v.length > maxLength) return { ok: false, error: `${p}: array longer than ${maxLength}` };
      const out: T[] = new Array<T>(v.length);
      for (let i = 0; i < v.length; i++) {
        const r = inner.decode(v[i], `${p}[${i}]`);
        if (!r.ok) return r;
        out[i] = r.value;
      }
      return ok(out);
    },
  };
}

export function record<T>(inner: Schema<T>): Schema<Readonly<Record<string, T>>> {
  return {
    describe: `Record<string, ${inner.describe}>`,
    decode(v, p) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(p, 'object', v);
      const out: Record<string, T> = {};
      for (const [k, x] of Object.entries(v)) {
        const r = inner.decode(x, `${p}.${k}`);
        if (!r.ok) return r;
        out[k] = r.value;
      }
      return ok(out);
    },
  };
}

type Shape = Record<string, Schema<unknown>>;
export type ObjectOf<S extends Shape> = { readonly [K in keyof S]: Infer<S[K]> };

/** Unknown keys are dropped, so a newer agent may add fields without breaking an older collector. */
export function object<S extends Shape>(shape: S): Schema<ObjectOf<S>> & { readonly shape: S } {
  const keys = Object.keys(shape);
  return {
    shape,
    describe: `{ ${keys.join(', ')} }`,
    decode(v, p) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(p, 'object', v);
      const src = v as Record<string, unknown>;
      const out: Record<string, unknown> = {};
      for (const k of keys) {
        const s = shape[k];
        if (s === undefined) continue;
        const r = s.decode(src[k], p ? `${p}.${k}` : k);
        if (!r.ok) return r;
        out[k] = r.value;
      }
      return ok(out as ObjectOf<S>);
    },
  };
}

/** A union told apart by one string field, decoded by the branch that field names. */
export function tagged<const K extends string, const M extends Record<string, Schema<unknown>>>(
  tagKey: K,
  branches: M,
): Schema<Infer<M[keyof M]>> {
  const names = Object.keys(branches);
  return {
    describe: `${tagKey} in ${names.join('|')}`,
    decode(v, p) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return fail(p, 'object', v);
      const tag = (v as Record<string, unknown>)[tagKey];
      const branch = typeof tag === 'string' && Object.hasOwn(branches, tag) ? branches[tag] : undefined;
      if (branch === undefined) return fail(p ? `${p}.${tagKey}` : tagKey, names.map((n) => JSON.stringify(n)).join(' | '), tag);
      return branch.decode(v, p) as Decoded<Infer<M[keyof M]>>;
    },
  };
}
