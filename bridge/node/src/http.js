'use strict';

/**
 * An HTTP face for the sample legacy service (node:http, JSON in and out), so the Python dual-mode
 * router can call the legacy side (bridge/_legacy_http.py). The service runs with the tap attached
 * (its emissions reach `legacy.assessment-events`, and through the Python bridge the store), and a
 * kafkajs consumer imports the store's reverse-synced assessments (`legacy.assessment-events.reverse`)
 * into its in-memory store, without emitting them through the tap.
 *
 * Endpoints (bodies and answers are JSON):
 *   POST /assessments                     {request, assessmentId?}      -> 201 {assessmentId}
 *   POST /assessments/:id/start                                          -> 200 record
 *   POST /assessments/:id/progress        {progress, message?}          -> 200 record
 *   POST /assessments/:id/complete        {result, durationMs?}         -> 200 record
 *   POST /assessments/:id/fail            {error}                       -> 200 record
 *   POST /assessments/:id/cancel                                         -> 200 record
 *   GET  /assessments/:id                                                -> 200 record
 *   GET  /assessments/:id/wait?timeout=ms  long-poll until completed/failed/cancelled -> 200 record
 *   GET  /health                                                         -> 200 {ok, tap, reverse}
 *   GET  /export, GET /export/checksums, GET /export/counts, GET /export/audit, POST /snapshot:
 *        see src/export-routes.js
 * Every change is written to the service's audit log (GET /export/audit) with its actor: the request's
 * `x-actor` header (at most 200 characters), else the service's default actor.
 * A record is the legacy record (the export fields) plus `version`: the number of changes this service
 * made to it, or for a reverse-synced assessment the store version of the last message applied; and
 * `storeVersion`: the store version of the last reverse-synced message applied (0: none), which the
 * Python router compares with the store to know the legacy side has caught up (sync before serve).
 * Errors: 400 {error: 'ValidationError', field, reason}; 404 {error: 'AssessmentNotFound', assessmentId};
 * 409 {error: 'InvalidTransition', assessmentId, status, action}; 408 {error: 'WaitTimeout',
 * assessmentId, timeoutMs, record}; 404/405 {error: 'NoSuchRoute'}; 413 {error: 'TooLarge'}.
 */

const http = require('node:http');
const os = require('node:os');
const { EventEmitter } = require('node:events');
const { Kafka } = require('kafkajs');
const { LegacyAssessmentService } = require('./legacy-service');
const { handleExport } = require('./export-routes');
const { tap } = require('./tap');
const { DEFAULTS, DEFAULT_BROKERS, parseBrokers, parseLogLevel, securityFromEnv } = require('./options');
const { ensureTopic } = require('./topics');

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const LIFECYCLE = ['created', 'started', 'progress', 'completed', 'failed', 'cancelled'].map((e) => `assessment.${e}`);
const MAX_BODY_BYTES = 1_000_000;
const MAX_WAIT_MS = 300_000;
const MAX_ACTOR_LENGTH = 200;

class HttpError extends Error {
  /**
   * @param {number} status
   * @param {Record<string, unknown>} body
   */
  constructor(status, body) {
    super(String(body.error));
    this.status = status;
    this.body = body;
  }
}

/**
 * The request handler over one service (no Kafka here: usable and testable on its own).
 * @param {LegacyAssessmentService} service
 */
function createHandler(service) {
  /** @type {Map<string, number>} changes made by this service per assessment */
  const versions = new Map();
  /** @type {Map<string, Set<() => void>>} */
  const waiters = new Map();
  const changed = (/** @type {string} */ id) => {
    const set = waiters.get(id);
    if (set) for (const wake of [...set]) wake();
  };
  for (const name of LIFECYCLE) {
    service.on(name, (/** @type {any} */ data) => {
      if (data && typeof data.assessmentId === 'string') {
        versions.set(data.assessmentId, (versions.get(data.assessmentId) ?? 0) + 1);
        changed(data.assessmentId);
      }
    });
  }
  service.on('reverse.imported', (/** @type {{assessmentId: string}} */ info) => changed(info.assessmentId));

  /** @param {string} id */
  const record = (id) => {
    const r = service.getAssessment(id);
    if (r === null) throw new HttpError(404, { error: 'AssessmentNotFound', assessmentId: id });
    return { ...r, version: service.importedVersion(id) || versions.get(id) || 0, storeVersion: service.importedVersion(id) };
  };

  /**
   * Runs a transition; an illegal one answers 409 with the current status.
   * @param {string} id
   * @param {string} action
   * @param {() => void} call
   */
  const transition = (id, action, call) => {
    record(id); // 404 first
    try {
      call();
    } catch (err) {
      if (err instanceof RangeError) throw new HttpError(400, { error: 'ValidationError', field: 'progress', reason: err.message });
      const current = service.getAssessment(id);
      throw new HttpError(409, {
        error: 'InvalidTransition',
        assessmentId: id,
        status: current ? current.status : null,
        action,
        message: err instanceof Error ? err.message : String(err),
      });
    }
    return record(id);
  };

  /**
   * @param {string} id
   * @param {number} timeoutMs
   * @param {http.IncomingMessage} req
   */
  const wait = (id, timeoutMs, req) => {
    const first = record(id);
    if (TERMINAL.has(first.status)) return Promise.resolve(first);
    return new Promise((resolve, reject) => {
      let set = waiters.get(id);
      if (!set) waiters.set(id, (set = new Set()));
      const done = () => {
        clearTimeout(timer);
        set.delete(wake);
        if (set.size === 0) waiters.delete(id);
        req.off('close', gone);
      };
      const wake = () => {
        const r = record(id);
        if (TERMINAL.has(r.status)) {
          done();
          resolve(r);
        }
      };
      const gone = () => {
        done();
        reject(new HttpError(499, { error: 'ClientClosed' }));
      };
      const timer = setTimeout(() => {
        done();
        reject(new HttpError(408, { error: 'WaitTimeout', assessmentId: id, timeoutMs, record: record(id) }));
      }, timeoutMs);
      set.add(wake);
      req.on('close', gone);
    });
  };

  /**
   * @param {http.IncomingMessage} req
   * @returns {Promise<Record<string, any>>}
   */
  const body = async (req) => {
    const chunks = [];
    let size = 0;
    for await (const chunk of req) {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) throw new HttpError(413, { error: 'TooLarge', limit: MAX_BODY_BYTES });
      chunks.push(chunk);
    }
    if (size === 0) return {};
    let parsed;
    try {
      parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch (err) {
      throw new HttpError(400, { error: 'ValidationError', field: 'body', reason: 'not JSON' });
    }
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
      throw new HttpError(400, { error: 'ValidationError', field: 'body', reason: 'must be a JSON object' });
    }
    return parsed;
  };

  /**
   * @param {http.IncomingMessage} req
   * @returns {Promise<[number, unknown]>}
   */
  const route = async (req) => {
    const raw = req.headers['x-actor'];
    const actor = Array.isArray(raw) ? raw[0] : raw;
    if (actor !== undefined && (actor.length === 0 || actor.length > MAX_ACTOR_LENGTH)) {
      throw new HttpError(400, { error: 'ValidationError', field: 'x-actor', reason: `must be 1 to ${MAX_ACTOR_LENGTH} characters` });
    }
    // The service's methods are synchronous: the actor is set around each call, never across an await.
    /** @type {<T>(call: () => T) => T} */
    const as = (call) => service.asActor(actor, call);
    const url = new URL(req.url || '/', 'http://localhost');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const method = req.method || 'GET';
    if (parts.length === 1 && parts[0] === 'health' && method === 'GET') return [200, { ok: true }];
    if (parts[0] !== 'assessments' || parts.length > 3) throw new HttpError(404, { error: 'NoSuchRoute', path: url.pathname });
    if (parts.length === 1) {
      if (method !== 'POST') throw new HttpError(405, { error: 'NoSuchRoute', method });
      const b = await body(req);
      if (b.assessmentId !== undefined) {
        if (typeof b.assessmentId !== 'string' || b.assessmentId.length === 0) {
          throw new HttpError(400, { error: 'ValidationError', field: 'assessmentId', reason: 'must be a non-empty string' });
        }
        const existing = service.getAssessment(b.assessmentId);
        if (existing) {
          throw new HttpError(409, { error: 'InvalidTransition', assessmentId: b.assessmentId, status: existing.status, action: 'create' });
        }
        return [201, { assessmentId: as(() => service.createAssessmentWithId(b.assessmentId, b.request)) }];
      }
      return [201, { assessmentId: as(() => service.createAssessment(b.request)) }];
    }
    const id = parts[1];
    const action = parts[2];
    if (method === 'GET') {
      if (action === undefined) return [200, record(id)];
      if (action === 'wait') {
        const raw = url.searchParams.get('timeout');
        const timeoutMs = raw === null ? 30000 : Number(raw);
        if (!Number.isFinite(timeoutMs) || timeoutMs < 0 || timeoutMs > MAX_WAIT_MS) {
          throw new HttpError(400, { error: 'ValidationError', field: 'timeout', reason: `must be ms in [0, ${MAX_WAIT_MS}]` });
        }
        return [200, await wait(id, timeoutMs, req)];
      }
      throw new HttpError(404, { error: 'NoSuchRoute', path: url.pathname });
    }
    if (method !== 'POST' || action === undefined) throw new HttpError(405, { error: 'NoSuchRoute', method });
    const b = await body(req);
    switch (action) {
      case 'start':
        return [200, transition(id, 'start', () => as(() => service.startAssessment(id)))];
      case 'progress':
        if (typeof b.progress !== 'number') {
          throw new HttpError(400, { error: 'ValidationError', field: 'progress', reason: 'must be a number' });
        }
        return [200, transition(id, 'update_progress', () => as(() => service.updateProgress(id, b.progress, b.message ?? undefined)))];
      case 'complete':
        // durationMs is accepted and ignored: the legacy service measures its own duration.
        return [200, transition(id, 'complete', () => as(() => service.completeAssessment(id, b.result)))];
      case 'fail':
        return [200, transition(id, 'fail', () => as(() => service.failAssessment(id, b.error === undefined ? 'failed' : String(b.error))))];
      case 'cancel':
        return [200, transition(id, 'cancel', () => as(() => service.cancelAssessment(id)))];
      default:
        throw new HttpError(404, { error: 'NoSuchRoute', path: url.pathname });
    }
  };

  /**
   * @param {http.IncomingMessage} req
   * @param {http.ServerResponse} res
   */
  return function handle(req, res) {
    if (handleExport(service, req, res)) return;
    route(req).then(
      ([status, payload]) => send(res, status, payload),
      (err) => {
        if (err instanceof HttpError) {
          if (err.status !== 499) send(res, err.status, err.body);
        } else {
          send(res, 500, { error: 'Internal', message: err instanceof Error ? err.message : String(err) });
        }
      },
    );
  };
}

/**
 * @param {http.ServerResponse} res
 * @param {number} status
 * @param {unknown} payload
 */
function send(res, status, payload) {
  if (res.writableEnded || res.destroyed) return;
  const text = JSON.stringify(payload);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * @typedef {object} LegacyHttpOptions
 * @property {number} [port] 0 (default) picks a free one
 * @property {string} [host] default 127.0.0.1
 * @property {string|string[]} [brokers] default env KAFKA_BOOTSTRAP, else 127.0.0.1:19092
 * @property {string} [topic] the tap's topic (default legacy.assessment-events)
 * @property {string|null} [reverseTopic] default `${topic}.reverse`; null: no reverse consumer
 * @property {string} [groupId] the reverse consumer's group (default assessment-legacy-reverse-import)
 * @property {string} [emitterId] the tap's emitter id (default legacy-http-<host>-<pid>-<start ms>)
 * @property {boolean} [createTopics] create missing topics (default true)
 * @property {number} [partitions] when creating topics (default 6)
 * @property {string} [logLevel] default warn
 * @property {number} [joinTimeoutMs] how long start() waits for the reverse consumer to join (default 30000)
 */

/**
 * The sample legacy service with its tap, its reverse-sync import and its HTTP face, started.
 * @param {LegacyHttpOptions} [options]
 */
async function startLegacyHttp(options = {}) {
  const brokersRaw = options.brokers ?? process.env.KAFKA_BOOTSTRAP ?? DEFAULT_BROKERS;
  const brokers = parseBrokers(brokersRaw);
  const topic = options.topic ?? DEFAULTS.topic;
  const reverseTopic = options.reverseTopic === undefined ? `${topic}.reverse` : options.reverseTopic;
  const logLevel = options.logLevel ?? 'warn';
  const emitterId = options.emitterId ?? `legacy-http-${os.hostname()}-${process.pid}-${Date.now()}`;
  if (options.createTopics !== false) {
    for (const t of reverseTopic === null ? [topic] : [topic, reverseTopic]) {
      await ensureTopic({ topic: t, brokers, partitions: options.partitions ?? 6, logLevel: /** @type {any} */ (logLevel) });
    }
  }

  const service = new LegacyAssessmentService();
  const handler = createHandler(service);
  const legacyTap = tap(service, { brokers, topic, emitterId, logLevel: /** @type {any} */ (logLevel) });
  const reverseStats = { messages: 0, applied: 0, duplicate: 0, conflict: 0, invalid: 0 };
  const events = new EventEmitter();

  /** @type {import('kafkajs').Consumer|null} */
  let consumer = null;
  if (reverseTopic !== null) {
    const kafka = new Kafka({
      ...securityFromEnv(),
      clientId: 'assessment-legacy-reverse',
      brokers,
      logLevel: parseLogLevel(logLevel),
    });
    consumer = kafka.consumer({ groupId: options.groupId ?? 'assessment-legacy-reverse-import', maxWaitTimeInMs: 100 });
    await consumer.connect();
    await consumer.subscribe({ topics: [reverseTopic], fromBeginning: true });
    const joined = new Promise((resolve) => {
      const c = /** @type {import('kafkajs').Consumer} */ (consumer);
      const off = c.on(c.events.GROUP_JOIN, () => {
        off();
        resolve(true);
      });
    });
    await consumer.run({
      eachMessage: async ({ message }) => {
        reverseStats.messages += 1;
        let outcome = 'invalid';
        try {
          outcome = service.importReverseMessage(JSON.parse(message.value ? message.value.toString('utf8') : 'null'));
        } catch {
          outcome = 'invalid';
        }
        reverseStats[/** @type {keyof typeof reverseStats} */ (outcome)] += 1;
        events.emit('reverse', outcome);
      },
    });
    const joinTimeout = options.joinTimeoutMs ?? 30000;
    /** @type {NodeJS.Timeout|undefined} */
    let timer;
    const ok = await Promise.race([joined, new Promise((r) => (timer = setTimeout(r, joinTimeout, false)))]);
    clearTimeout(timer);
    if (!ok) process.stderr.write(`legacy-http: reverse consumer did not join its group within ${joinTimeout} ms; continuing\n`);
  }

  const server = http.createServer((req, res) => {
    const url = req.url || '';
    if (url === '/health' && req.method === 'GET') {
      send(res, 200, { ok: true, emitter: emitterId, tap: legacyTap.stats(), reverse: { ...reverseStats } });
      return;
    }
    handler(req, res);
  });
  server.keepAliveTimeout = 30000;
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve(undefined);
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;

  /** @type {Promise<unknown>|null} */
  let closing = null;
  return {
    port,
    service,
    tap: legacyTap,
    events,
    emitterId,
    reverseStats: () => ({ ...reverseStats }),
    /** Stops accepting, stops the reverse consumer, delivers what the tap buffered. */
    close(/** @type {{timeoutMs?: number}} */ { timeoutMs = 10000 } = {}) {
      if (closing === null) {
        closing = (async () => {
          server.closeAllConnections();
          await new Promise((resolve) => server.close(() => resolve(undefined)));
          if (consumer !== null) await consumer.disconnect();
          return legacyTap.close({ timeoutMs });
        })();
      }
      return closing;
    },
  };
}

module.exports = { createHandler, startLegacyHttp };
