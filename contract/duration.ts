// The one duration syntax every flag and query uses (`--history 15m`,
// `--capture 1m`, `?since=90s`): a whole number and a unit. Anything longer
// than a year is refused rather than overflowing into a time no Date holds.

const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
export const MAX_DURATION_MS = 366 * 86_400_000;

/** Milliseconds, or null when `text` is not `<digits><ms|s|m|h|d>` within a year. */
export function parseDuration(text: string): number | null {
  const m = /^(\d{1,12})(ms|s|m|h|d)$/.exec(text.trim());
  if (m === null || m[1] === undefined || m[2] === undefined) return null;
  const ms = Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
  return Number.isSafeInteger(ms) && ms <= MAX_DURATION_MS ? ms : null;
}

export const DURATION_HINT = 'a duration like 500ms, 90s, 10m, 2h or 1d (at most a year)';
