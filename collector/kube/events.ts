// Findings as Kubernetes Events (events.k8s.io/v1), where `kubectl describe`
// shows them: a Warning on the Service a finding is about, and on the pod
// behind its endpoint when the API named one. It behaves like client-go's
// event recorder (k8s.io/client-go/tools/events/event_broadcaster.go): Events
// with the same regarding object, reason, action, reporting controller and
// instance, type and related object are one series; the first is created,
// the repeats PATCH the Event's `series` (count, lastObservedTime) with a
// strategic merge patch, and a series whose Event is gone (404) starts a new
// one. Unlike client-go, which writes the series at the second occurrence and
// then every 30 minutes, every repeat is written, as far as a per-object
// token bucket allows; what the bucket holds back is written later in one
// PATCH carrying the whole count. Nothing here may slow or break the finding
// path: lines go into a bounded queue and the API is called from it, one
// request at a time, its errors logged (a 403 once) and never thrown.
import { hostname } from 'node:os';
import type { Logger } from 'pino';
import type { FindingLine } from '../detection/aggregate.ts';
import type { Bounds } from '../state/bounds.ts';
import type { KubeView } from './catalog.ts';
import { kubeServiceOf } from './enrich.ts';
import { findKubeConfig } from './watcher.ts';

export const REPORTING_CONTROLLER = 'conntrail.io/collector';
/**
 * Required by events.k8s.io/v1 (at most 128 characters): what was done
 * regarding the object. It is part of the series key, and an Event's note
 * cannot change: a latent risk (warning) and drops seen (error) are told
 * apart here, so the error gets its own Event and note instead of folding
 * into the warning's series.
 */
export const ACTION = 'Detected';
export const ACTION_RISK = 'RiskSeen';
export const actionOf = (severity: string): string => (severity === 'error' ? ACTION : ACTION_RISK);
/**
 * kube-apiserver's pkg/apis/core/validation/events.go: NoteLengthLimit = 1024
 * (compared with Go's len, so bytes), ReportingInstanceLengthLimit = 128.
 */
export const NOTE_LIMIT_BYTES = 1024;
const INSTANCE_LIMIT = 128;
/** Event names are DNS subdomains (at most 253); client-go names them `<regarding name>.<hex nanoseconds>`. */
const NAME_LIMIT = 253;

export interface EventsLimits {
  /** Requests (create or patch) an object may take at once. */
  readonly burst: number;
  /** One more request allowed per this many ms, per object. */
  readonly refillMs: number;
  /** Finding lines waiting for the API; past it a line is not posted (counted, a collector bound). */
  readonly queue: number;
  /** Objects whose rate is tracked; past it a new object gets no Event until one is pruned. */
  readonly objects: number;
  /** Series kept to update; past it a new series is not started until one finishes. */
  readonly series: number;
  /** A series not seen for this long is finished (client-go's finishTime: 6 min); a repeat after it creates a new Event. */
  readonly finishMs: number;
  /** How long a fetched uid is trusted (a Pod recreated under its name has a new one). */
  readonly uidTtlMs: number;
  /** How often series held back by the rate bound are written and finished series dropped. */
  readonly sweepMs: number;
  /** One API request longer than this counts as failed (the queue moves on). */
  readonly requestTimeoutMs: number;
}

export const DEFAULT_EVENTS_LIMITS: EventsLimits = {
  burst: 25,
  refillMs: 5 * 60_000,
  // client-go's maxQueuedEvents.
  queue: 1_000,
  objects: 2_000,
  series: 4_000,
  finishMs: 6 * 60_000,
  uidTtlMs: 5 * 60_000,
  sweepMs: 60_000,
  requestTimeoutMs: 10_000,
};

export interface ObjectRef {
  readonly kind: 'Service' | 'Pod';
  readonly apiVersion: 'v1';
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

export interface EventSeriesBody {
  readonly count: number;
  /** ms since the epoch; sent as a MicroTime. */
  readonly lastObservedTime: number;
}

/** An events.k8s.io/v1 Event as created, times in ms. */
export interface EventBody {
  readonly name: string;
  readonly namespace: string;
  readonly eventTime: number;
  readonly type: 'Warning';
  readonly reason: string;
  readonly action: string;
  readonly note: string;
  readonly regarding: ObjectRef;
  readonly related: ObjectRef | null;
  readonly reportingController: string;
  readonly reportingInstance: string;
  readonly series: EventSeriesBody | null;
}

/** What the recorder needs of the API; errors are thrown as the client throws them (with an HTTP `code`). */
export interface EventSink {
  /** The object's uid; null when the API has no such object (404). */
  uid(kind: ObjectRef['kind'], namespace: string, name: string): Promise<string | null>;
  create(event: EventBody): Promise<void>;
  /** Writes the series of an existing Event; 'gone' when the API no longer has it (404). */
  patchSeries(namespace: string, name: string, series: EventSeriesBody): Promise<'ok' | 'gone'>;
}

export interface EventsStats {
  readonly created: number;
  readonly patched: number;
  /** Requests the per-object rate bound held back. */
  readonly throttled: number;
  /** Lines not posted because the queue was full. */
  readonly dropped: number;
  readonly errors: number;
  readonly forbidden: number;
}

/** `port-reuse-to-removed-endpoint` → `PortReuseToRemovedEndpoint`. */
export function reasonOf(kind: string): string {
  return kind
    .split('-')
    .filter((w) => w !== '')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join('')
    .slice(0, 128);
}

/** `text` cut to at most `limit` UTF-8 bytes, on a character boundary, ending in … when cut. */
export function truncateBytes(text: string, limit = NOTE_LIMIT_BYTES): string {
  if (Buffer.byteLength(text) <= limit) return text;
  const ellipsis = '…';
  let used = Buffer.byteLength(ellipsis);
  let out = '';
  for (const ch of text) {
    const n = Buffer.byteLength(ch);
    if (used + n > limit) break;
    used += n;
    out += ch;
  }
  return out + ellipsis;
}

// apimachinery's IsDNS1123Label / IsDNS1035Label / IsDNS1123Subdomain.
const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS1035_LABEL = /^[a-z]([-a-z0-9]*[a-z0-9])?$/;
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const isNamespace = (s: string): boolean => s.length <= 63 && DNS1123_LABEL.test(s);
const isServiceName = (s: string): boolean => s.length <= 63 && DNS1035_LABEL.test(s);
const isPodName = (s: string): boolean => s.length <= 253 && DNS1123_SUBDOMAIN.test(s);

interface Target {
  readonly kind: ObjectRef['kind'];
  readonly namespace: string;
  readonly name: string;
}

/**
 * The objects a finding line is about, by names the API gave: the Service
 * only when the catalog (filled from the API) has it at the line's time (the
 * rules' `ns/name` comment alone is node data), the pod from the
 * EndpointSlice's targetRef. Names that are not valid object names are
 * dropped, so nothing else becomes a path segment.
 */
export function targetsOf(line: FindingLine, kube: KubeView): Target[] {
  const out: Target[] = [];
  const service = kubeServiceOf(line, kube);
  if (service !== null && kube.serviceAt(service, line.time) !== null) {
    const [namespace = '', name = ''] = service.split('/');
    if (isNamespace(namespace) && isServiceName(name)) out.push({ kind: 'Service', namespace, name });
  }
  const pod = line.pod ?? null;
  if (pod !== null) {
    const slash = pod.indexOf('/');
    const namespace = pod.slice(0, slash);
    const name = pod.slice(slash + 1);
    if (slash > 0 && isNamespace(namespace) && isPodName(name)) out.push({ kind: 'Pod', namespace, name });
  }
  return out;
}

interface Job {
  readonly reason: string;
  readonly action: string;
  readonly note: string;
  readonly time: number;
  readonly lastSeen: number;
  readonly count: number;
  readonly targets: readonly Target[];
}

interface ObjectState {
  tokens: number;
  at: number;
  uid: string | null;
  uidAt: number;
}

interface Series {
  readonly objectKey: string;
  readonly namespace: string;
  name: string;
  readonly body: Omit<EventBody, 'name' | 'series'>;
  count: number;
  sent: number;
  lastObserved: number;
  lastActivity: number;
}

export interface KubeEventsOptions {
  readonly log: Logger;
  readonly sink: EventSink;
  readonly kube: KubeView;
  /** Where the queue, object and series bounds are listed (the collector's). */
  readonly bounds: Bounds | null;
  readonly reportingInstance: string;
  readonly now?: () => number;
  readonly limits?: Partial<EventsLimits>;
}

const statusOf = (err: unknown): number | null => {
  if (typeof err !== 'object' || err === null || !('code' in err)) return null;
  return typeof err.code === 'number' ? err.code : null;
};

/** What the API said, in one short line (a Status's message when the body is one). */
function describe(err: unknown): string {
  const code = statusOf(err);
  let message = err instanceof Error ? (err.message.split('\n')[0] ?? '') : String(err);
  const body = typeof err === 'object' && err !== null && 'body' in err ? err.body : undefined;
  const parsed = typeof body === 'string' ? safeJson(body) : body;
  if (typeof parsed === 'object' && parsed !== null && 'message' in parsed && typeof parsed.message === 'string') message = parsed.message;
  message = message.slice(0, 300);
  return code === null ? message : `${code}: ${message}`;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}

/** At most this many API errors other than 403 are logged; the rest are counted. */
const LOGGED_ERRORS = 10;

export class KubeEvents {
  readonly #log: Logger;
  readonly #sink: EventSink;
  readonly #kube: KubeView;
  readonly #bounds: Bounds | null;
  readonly #instance: string;
  readonly #now: () => number;
  readonly #limits: EventsLimits;
  readonly #jobs: Job[] = [];
  readonly #objects = new Map<string, ObjectState>();
  readonly #series = new Map<string, Series>();
  readonly #idle = new Set<() => void>();
  #running = false;
  #sweepQueued = false;
  #stopped = false;
  #timer: NodeJS.Timeout | null = null;
  #seq = 0;
  #forbiddenLogged = false;
  #errorsLogged = 0;
  #created = 0;
  #patched = 0;
  #throttled = 0;
  #dropped = 0;
  #errors = 0;
  #forbidden = 0;

  constructor(o: KubeEventsOptions) {
    this.#log = o.log;
    this.#sink = o.sink;
    this.#kube = o.kube;
    this.#bounds = o.bounds;
    this.#instance = o.reportingInstance.slice(0, INSTANCE_LIMIT);
    this.#now = o.now ?? Date.now;
    this.#limits = { ...DEFAULT_EVENTS_LIMITS, ...o.limits };
  }

  /** Writes held-back series and drops finished ones every `sweepMs` (the timer does not keep the process alive). */
  start(): this {
    if (this.#timer === null && !this.#stopped) {
      this.#timer = setInterval(() => this.sweep(), this.#limits.sweepMs);
      this.#timer.unref();
    }
    return this;
  }

  /** Takes one finding line; returns at once, never throws. */
  finding(line: FindingLine): void {
    if (this.#stopped) return;
    try {
      const targets = targetsOf(line, this.#kube);
      if (targets.length === 0) return;
      if (this.#jobs.length >= this.#limits.queue) {
        this.#dropped++;
        this.#bounds?.hit('kubernetes-events-queue', 'collector', this.#limits.queue, 'finding line not posted as a Kubernetes Event (it is logged as always); the API is slower than findings arrive');
        return;
      }
      const lastSeen = Date.parse(line.lastSeen);
      this.#jobs.push({ reason: reasonOf(line.finding), action: actionOf(line.severity), note: truncateBytes(line.summary), time: line.time, lastSeen: Number.isFinite(lastSeen) ? lastSeen : line.time, count: Math.max(1, line.count), targets });
      this.#pump();
    } catch (err) {
      this.#failed(err, 'queueing a finding');
    }
  }

  /** Queues a pass that writes series the rate bound held back and forgets finished series and idle objects. */
  sweep(): void {
    if (this.#stopped || this.#sweepQueued) return;
    this.#sweepQueued = true;
    this.#pump();
  }

  /** Resolves when nothing is queued or in flight. */
  idle(): Promise<void> {
    if (!this.#running && this.#jobs.length === 0 && !this.#sweepQueued) return Promise.resolve();
    return new Promise((resolve) => this.#idle.add(resolve));
  }

  stats(): EventsStats {
    return { created: this.#created, patched: this.#patched, throttled: this.#throttled, dropped: this.#dropped, errors: this.#errors, forbidden: this.#forbidden };
  }

  /** Stops taking lines and gives what is queued (the lines a shutdown flushed) at most `waitMs` to be posted. */
  async stop(waitMs = 5_000): Promise<void> {
    this.#stopped = true;
    if (this.#timer !== null) clearInterval(this.#timer);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.idle(), new Promise<void>((r) => (timer = setTimeout(r, waitMs)))]);
    clearTimeout(timer);
    this.#jobs.length = 0;
  }

  #pump(): void {
    if (this.#running) return;
    this.#running = true;
    void (async () => {
      for (;;) {
        const job = this.#jobs.shift();
        if (job !== undefined) {
          for (const t of job.targets) await this.#guard(() => this.#record(job, t, job.targets), `posting a ${job.reason} Event on ${t.kind} ${t.namespace}/${t.name}`);
          continue;
        }
        if (this.#sweepQueued) {
          await this.#guard(() => this.#sweepNow(), 'writing held-back Event series');
          this.#sweepQueued = false;
          continue;
        }
        break;
      }
      this.#running = false;
      for (const resolve of this.#idle) resolve();
      this.#idle.clear();
    })();
  }

  async #guard(fn: () => Promise<void>, what: string): Promise<void> {
    try {
      await fn();
    } catch (err) {
      this.#failed(err, what);
    }
  }

  /** Bounds one API call in time: a hung request fails this job, not the queue. */
  async #call<T>(request: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer from the Kubernetes API within ${this.#limits.requestTimeoutMs} ms`)), this.#limits.requestTimeoutMs);
    });
    request.catch(() => undefined);
    try {
      return await Promise.race([request, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  #failed(err: unknown, what: string): void {
    if (statusOf(err) === 403) {
      this.#forbidden++;
      if (this.#forbiddenLogged) return;
      this.#forbiddenLogged = true;
      this.#log.warn({ kubernetesEvents: 'forbidden', reason: describe(err), while: what }, 'Kubernetes Events: the API refused (403): the collector\'s ClusterRole needs create and patch on events.k8s.io events (manifests/rbac.yaml); findings are still logged and detection goes on. Said once');
      return;
    }
    this.#errors++;
    if (this.#errorsLogged > LOGGED_ERRORS) return;
    this.#errorsLogged++;
    if (this.#errorsLogged > LOGGED_ERRORS) this.#log.warn({ kubernetesEvents: 'error', logged: LOGGED_ERRORS }, 'Kubernetes Events: more API errors; no more are logged (findings are still logged)');
    else this.#log.warn({ kubernetesEvents: 'error', reason: describe(err), while: what }, 'Kubernetes Events: an API request failed; the finding is logged as always');
  }

  /** Takes one request from the object's bucket (burst, then one per refillMs); false when empty. */
  #take(key: string, state: ObjectState): boolean {
    const now = this.#now();
    state.tokens = Math.min(this.#limits.burst, state.tokens + (now - state.at) / this.#limits.refillMs);
    state.at = now;
    if (state.tokens >= 1) {
      state.tokens--;
      return true;
    }
    this.#throttled++;
    this.#bounds?.hit('kubernetes-events-rate', key, this.#limits.burst, `no Event created or updated for this object until its bucket refills (one per ${Math.round(this.#limits.refillMs / 1000)} s); the series count catches up then`);
    return false;
  }

  #object(key: string): ObjectState | null {
    let state = this.#objects.get(key);
    if (state !== undefined) return state;
    if (this.#objects.size >= this.#limits.objects) this.#prune();
    if (this.#objects.size >= this.#limits.objects) {
      this.#bounds?.hit('kubernetes-events-objects', 'collector', this.#limits.objects, 'no Event on a further object until the rate state of an idle one is forgotten');
      return null;
    }
    state = { tokens: this.#limits.burst, at: this.#now(), uid: null, uidAt: 0 };
    this.#objects.set(key, state);
    return state;
  }

  async #uid(t: Target, state: ObjectState): Promise<string | null> {
    const now = this.#now();
    if (state.uid !== null && now - state.uidAt < this.#limits.uidTtlMs) return state.uid;
    state.uid = await this.#call(this.#sink.uid(t.kind, t.namespace, t.name));
    state.uidAt = now;
    return state.uid;
  }

  async #record(job: Job, t: Target, all: readonly Target[]): Promise<void> {
    const objectKey = `${t.kind} ${t.namespace}/${t.name}`;
    const state = this.#object(objectKey);
    if (state === null) return;
    const uid = await this.#uid(t, state);
    if (uid === null) {
      this.#log.debug({ kind: t.kind, object: `${t.namespace}/${t.name}` }, 'Kubernetes Events: the object is gone from the API; no Event');
      return;
    }
    const regarding: ObjectRef = { kind: t.kind, apiVersion: 'v1', namespace: t.namespace, name: t.name, uid };
    // On the pod's Event, the Service it is behind; its uid only when already known (no request for it).
    const service = t.kind === 'Pod' ? all.find((x) => x.kind === 'Service') : undefined;
    const serviceState = service === undefined ? undefined : this.#objects.get(`Service ${service.namespace}/${service.name}`);
    const related: ObjectRef | null = service === undefined || serviceState === undefined || serviceState.uid === null ? null : { kind: 'Service', apiVersion: 'v1', namespace: service.namespace, name: service.name, uid: serviceState.uid };
    const body: Omit<EventBody, 'name' | 'series'> = { namespace: t.namespace, eventTime: job.time, type: 'Warning', reason: job.reason, action: job.action, note: job.note, regarding, related, reportingController: REPORTING_CONTROLLER, reportingInstance: this.#instance };
    // client-go's isomorphism key (getKey): type, action, reason, reporting controller and instance, regarding, related.
    const key = JSON.stringify([body.type, body.action, body.reason, body.reportingController, body.reportingInstance, regarding, related]);
    const now = this.#now();
    const series = this.#series.get(key);
    if (series !== undefined && now - series.lastActivity <= this.#limits.finishMs) {
      series.count += job.count;
      series.lastObserved = Math.max(series.lastObserved, job.lastSeen);
      series.lastActivity = now;
      if (this.#take(objectKey, state)) await this.#writeSeries(series);
      return;
    }
    if (series !== undefined) this.#series.delete(key);
    if (this.#series.size >= this.#limits.series) this.#finishIdle(now);
    if (this.#series.size >= this.#limits.series) {
      this.#bounds?.hit('kubernetes-events-series', 'collector', this.#limits.series, 'no new Event series until one finishes');
      return;
    }
    if (!this.#take(objectKey, state)) return;
    const fresh: Series = { objectKey, namespace: t.namespace, name: this.#eventName(t.name, now), body, count: job.count, sent: 0, lastObserved: job.lastSeen, lastActivity: now };
    await this.#create(fresh);
    this.#series.set(key, fresh);
  }

  async #create(series: Series): Promise<void> {
    const body: EventBody = { ...series.body, name: series.name, series: series.count >= 2 ? { count: series.count, lastObservedTime: series.lastObserved } : null };
    await this.#call(this.#sink.create(body));
    series.sent = series.count;
    this.#created++;
  }

  async #writeSeries(series: Series): Promise<void> {
    const count = series.count;
    const result = await this.#call(this.#sink.patchSeries(series.namespace, series.name, { count, lastObservedTime: series.lastObserved }));
    if (result === 'gone') {
      // The API dropped the Event (its TTL, an hour by default): a new one carries the series on, as client-go does.
      series.name = this.#eventName(series.body.regarding.name, this.#now());
      await this.#create(series);
      return;
    }
    series.sent = count;
    this.#patched++;
  }

  async #sweepNow(): Promise<void> {
    for (const series of this.#series.values()) {
      if (series.count <= series.sent) continue;
      const state = this.#objects.get(series.objectKey);
      if (state === undefined || !this.#take(series.objectKey, state)) continue;
      await this.#guard(() => this.#writeSeries(series), `writing the series of Event ${series.namespace}/${series.name}`);
    }
    this.#finishIdle(this.#now());
    this.#prune();
  }

  /** Forgets series not seen for finishMs whose count has been written. */
  #finishIdle(now: number): void {
    for (const [key, s] of this.#series) if (now - s.lastActivity > this.#limits.finishMs && s.count <= s.sent) this.#series.delete(key);
  }

  /** Forgets objects no series refers to whose bucket has refilled: their state is the same as a new one's. */
  #prune(): void {
    const now = this.#now();
    const referenced = new Set<string>();
    for (const s of this.#series.values()) referenced.add(s.objectKey);
    for (const [key, state] of this.#objects) {
      const tokens = state.tokens + (now - state.at) / this.#limits.refillMs;
      if (!referenced.has(key) && tokens >= this.#limits.burst) this.#objects.delete(key);
    }
  }

  /** client-go's `<name>.<hex nanoseconds>`, the name cut so the whole stays a DNS subdomain; a counter keeps two in one ms apart. */
  #eventName(objectName: string, now: number): string {
    const nanos = BigInt(Math.max(0, Math.floor(now))) * 1_000_000n + BigInt(this.#seq++ % 1_000_000);
    const suffix = `.${nanos.toString(16)}`;
    const head = objectName.slice(0, NAME_LIMIT - suffix.length).replace(/[-.]+$/, '');
    return `${head}${suffix}`;
  }
}

/** The collector pod's name (POD_NAME from the downward API), else the hostname. */
export function reportingInstance(env: NodeJS.ProcessEnv = process.env): string {
  const pod = env.POD_NAME?.trim();
  return (pod ? pod : hostname()).slice(0, INSTANCE_LIMIT);
}

/** MicroTime as kube-apiserver writes it (RFC 3339, six fractional digits). */
export const microTime = (ms: number): string => new Date(ms).toISOString().replace(/Z$/, '000Z');

/** The sink over @kubernetes/client-node: EventsV1Api for Events, CoreV1Api for the uids. */
async function clientSink(source: string): Promise<EventSink> {
  const k8s = await import('@kubernetes/client-node');
  const config = new k8s.KubeConfig();
  if (source === 'in-cluster') config.loadFromCluster();
  else config.loadFromFile(source);
  const events = config.makeApiClient(k8s.EventsV1Api);
  const core = config.makeApiClient(k8s.CoreV1Api);
  // client-go patches a series with a strategic merge patch; the generated client would otherwise send a JSON Patch content type.
  const strategic = k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.StrategicMergePatch);
  const ref = (r: ObjectRef) => ({ kind: r.kind, apiVersion: r.apiVersion, namespace: r.namespace, name: r.name, uid: r.uid });
  return {
    async uid(kind, namespace, name) {
      try {
        const o = kind === 'Service' ? await core.readNamespacedService({ namespace, name }) : await core.readNamespacedPod({ namespace, name });
        return o.metadata?.uid ?? null;
      } catch (err) {
        if (statusOf(err) === 404) return null;
        throw err;
      }
    },
    async create(e) {
      await events.createNamespacedEvent({
        namespace: e.namespace,
        body: {
          apiVersion: 'events.k8s.io/v1',
          kind: 'Event',
          metadata: { name: e.name, namespace: e.namespace },
          eventTime: new k8s.V1MicroTime(e.eventTime),
          type: e.type,
          reason: e.reason,
          action: e.action,
          note: e.note,
          regarding: ref(e.regarding),
          ...(e.related === null ? {} : { related: ref(e.related) }),
          reportingController: e.reportingController,
          reportingInstance: e.reportingInstance,
          ...(e.series === null ? {} : { series: { count: e.series.count, lastObservedTime: new k8s.V1MicroTime(e.series.lastObservedTime) } }),
        },
      });
    },
    async patchSeries(namespace, name, series) {
      try {
        await events.patchNamespacedEvent({ namespace, name, body: { series: { count: series.count, lastObservedTime: microTime(series.lastObservedTime) } } }, strategic);
        return 'ok';
      } catch (err) {
        if (statusOf(err) === 404) return 'gone';
        throw err;
      }
    },
  };
}

export interface StartKubeEventsOptions {
  readonly log: Logger;
  /** `--no-events`. */
  readonly disabled: boolean;
  /** The cluster view's catalog; null when there is no API access (no Events then). */
  readonly kube: KubeView | null;
  readonly bounds: Bounds | null;
  readonly kubeconfig?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly now?: () => number;
  readonly limits?: Partial<EventsLimits>;
}

/** Posts findings as Events when there is API access and `--no-events` is not given; null otherwise (said once). */
export async function startKubeEvents(o: StartKubeEventsOptions): Promise<KubeEvents | null> {
  if (o.disabled) {
    o.log.info({ kubernetesEvents: 'off' }, 'Kubernetes Events off (--no-events): findings are only logged');
    return null;
  }
  if (o.kube === null) return null;
  const source = findKubeConfig(o.kubeconfig, o.env);
  if (source === null) return null;
  let sink: EventSink;
  try {
    sink = await clientSink(source);
  } catch (err) {
    o.log.warn({ kubernetesEvents: 'unusable', reason: describe(err) }, 'Kubernetes Events off: the API config could not be loaded');
    return null;
  }
  const limits = { ...DEFAULT_EVENTS_LIMITS, ...o.limits };
  const instance = reportingInstance(o.env);
  o.log.info(
    { kubernetesEvents: 'on', reportingController: REPORTING_CONTROLLER, reportingInstance: instance, burst: limits.burst, refillSeconds: limits.refillMs / 1000 },
    'Kubernetes Events: each finding is posted as a Warning Event on its Service and on the pod behind its endpoint; repeats update the Event\'s series (--no-events turns this off)',
  );
  return new KubeEvents({ log: o.log, sink, kube: o.kube, bounds: o.bounds, reportingInstance: instance, ...(o.now === undefined ? {} : { now: o.now }), limits }).start();
}
