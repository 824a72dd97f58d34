// The collector's memory budget. Past it, history is shed before live state:
// the oldest steps of every node's timeline are folded into its base (a
// bundle then starts later), because live state is what detection needs and
// a node's picture cannot be rebuilt without a resync. Shedding is logged
// once and listed with the other bounds.
import { readFileSync } from 'node:fs';

/** The container's memory limit (cgroup v2, then v1), or null outside one. */
export function cgroupMemoryLimit(read: (path: string) => string = (p) => readFileSync(p, 'utf8')): number | null {
  for (const path of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    let text: string;
    try {
      text = read(path).trim();
    } catch {
      continue;
    }
    const n = Number(text);
    // v1 reports "no limit" as a huge page-aligned number.
    if (Number.isSafeInteger(n) && n > 0 && n < 2 ** 60) return n;
  }
  return null;
}

/** The Deployment's limit (manifests/collector.yaml) when no cgroup says otherwise. */
export const DEFAULT_LIMIT_BYTES = 1024 ** 3;

/** 85% of the limit: V8 and buffers outside the heap need the rest before the OOM killer acts. */
export function defaultBudget(limit: number | null = cgroupMemoryLimit()): number {
  return Math.floor((limit ?? DEFAULT_LIMIT_BYTES) * 0.85);
}

const SIZE_UNITS: Record<string, number> = { '': 1, k: 1e3, m: 1e6, g: 1e9, ki: 1024, mi: 1024 ** 2, gi: 1024 ** 3 };

/** `900Mi`, `1Gi`, `500M`, `1073741824` → bytes; null when not a size. */
export function parseSize(text: string): number | null {
  const m = /^(\d{1,15})(|k|m|g|ki|mi|gi)$/i.exec(text.trim());
  if (m === null || m[1] === undefined) return null;
  const unit = SIZE_UNITS[(m[2] ?? '').toLowerCase()];
  if (unit === undefined) return null;
  const n = Number(m[1]) * unit;
  return Number.isSafeInteger(n) && n > 0 ? n : null;
}

export interface Sheddable {
  /** Folds the oldest steps so that at most `keepMs` of timeline stays; returns the steps folded. */
  shedHistory(keepMs: number): number;
}

export class MemoryBudget {
  readonly budget: number;
  readonly #rss: () => number;
  /** Timeline currently allowed; halves each time the budget is exceeded, down to a minute. */
  #keepMs: number;
  #checkedAt = 0;

  constructor(budget: number, historyMs: number, rss: () => number = () => process.memoryUsage.rss()) {
    this.budget = budget;
    this.#keepMs = historyMs;
    this.#rss = rss;
  }

  get keepMs(): number {
    return this.#keepMs;
  }

  /**
   * At most once a second: over budget, halves the history kept, when the
   * history is in the heap (`target`). With history in the store (null) the
   * heap holds live state and a few seconds: there is nothing to shed, and
   * the answer says only that RSS is over (folded -1). Returns null when
   * under budget or not checked.
   */
  check(now: number, target: Sheddable | null): { rss: number; keepMs: number; folded: number } | null {
    if (now - this.#checkedAt < 1_000) return null;
    this.#checkedAt = now;
    const rss = this.#rss();
    if (rss <= this.budget) return null;
    if (target === null) return { rss, keepMs: this.#keepMs, folded: -1 };
    if (this.#keepMs <= 60_000) return null;
    this.#keepMs = Math.max(60_000, Math.floor(this.#keepMs / 2));
    return { rss, keepMs: this.#keepMs, folded: target.shedHistory(this.#keepMs) };
  }
}
