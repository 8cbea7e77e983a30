'use strict';

const { EventEmitter } = require('node:events');
const { Kafka, Partitioners } = require('kafkajs');
const { BoundedQueue } = require('./queue');
const { LEGACY_EVENTS, resolveOptions } = require('./options');
const { TapCloseError, TapFlushTimeoutError, describeError, protocolErrorTypes } = require('./errors');

/** @typedef {import('./options').TapOptions} TapOptions */
/** @typedef {import('./options').DropInfo} DropInfo */

/**
 * @typedef {object} TapStats
 * @property {number} emitted emissions of the six legacy events seen (= the last seq handed out)
 * @property {number} forwarded messages acknowledged by Kafka (acks=all)
 * @property {number} buffered messages not yet acknowledged (waiting + in flight)
 * @property {number} inFlight messages of the produce request under way
 * @property {number} dropped buffered messages given up: oldest evicted on overflow, or left at close()
 * @property {number} oversized messages over maxMessageBytes (or refused by the broker as too large), never sent
 * @property {number} unserializable emissions whose data JSON.stringify refused (cycles, BigInt, throwing getters)
 * @property {number} failedAttempts failed connect/produce attempts (each is retried with backoff)
 * @property {number} callbackErrors errors thrown by onDrop callbacks or 'dropped' listeners (logged)
 * @property {string|null} lastError the last delivery or callback error, "operation: Name: message"
 * @property {boolean} connected whether the producer is connected
 * @property {boolean} closed whether close() was called
 */

/**
 * @typedef {object} Buffered
 * @property {number} seq
 * @property {string|null} key
 * @property {string} value
 * @property {number} bytes
 */

const EVENTS = new Set(LEGACY_EVENTS);
const TAPPED = Symbol.for('@assessment-store/legacy-tap');
const TOO_LARGE = ['MESSAGE_TOO_LARGE', 'RECORD_LIST_TOO_LARGE'];
/** Cap of kafkajs's own retry backoff unless options.kafka.retry says otherwise. */
const KAFKAJS_MAX_RETRY_MS = 5000;
/** How long close() waits, after disconnecting, for a connect/send kafkajs is still retrying. */
const CLOSE_GRACE_MS = 2000;

/**
 * @param {Promise<unknown>} promise a promise that never rejects
 * @param {number} ms
 * @returns {Promise<boolean>} whether it settled within ms
 */
function settlesWithin(promise, ms) {
  /** @type {NodeJS.Timeout|undefined} */
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, ms, false);
  });
  return Promise.race([promise.then(() => true), timeout]).finally(() => clearTimeout(timer));
}

/**
 * Forwards the legacy lifecycle emissions of one EventEmitter to Kafka. Create it with tap().
 * Events: 'dropped' (DropInfo) whenever messages are given up, never 'error' (an unhandled 'error'
 * would crash the legacy process; failures are counted in stats() and logged instead).
 */
class LegacyTap extends EventEmitter {
  #opts;
  #emitter;
  #logger;
  #kafka;
  /** @type {import('kafkajs').Producer|null} */
  #producer = null;
  #connected = false;
  /** @type {BoundedQueue<Buffered>} */
  #queue;
  /** @type {Buffered[]} */
  #inFlight = [];
  #batchLimit;
  #seq = 0;
  #counts = { forwarded: 0, dropped: 0, oversized: 0, unserializable: 0, failedAttempts: 0, callbackErrors: 0 };
  /** @type {string|null} */
  #lastError = null;
  #active = true;
  #stopped = false;
  #abandoned = false;
  /** @type {Promise<void>|null} */
  #drainPromise = null;
  /** @type {Set<{resolve: () => void, reject: (e: Error) => void, timer: NodeJS.Timeout|null}>} */
  #flushWaiters = new Set();
  /** @type {(() => void)|null} */
  #wake = null;
  /** @type {DropInfo[]} */
  #pendingDrops = [];
  /** @type {Promise<TapStats>|null} */
  #closePromise = null;
  /** @type {(() => void)|null} */
  #unhook = null;

  /**
   * @param {EventEmitter} emitter
   * @param {TapOptions} options
   */
  constructor(emitter, options) {
    super();
    if (emitter === null || typeof emitter !== 'object' || typeof emitter.emit !== 'function') {
      throw new TypeError('tap(emitter): emitter must be an object with an emit() method (an EventEmitter)');
    }
    if (/** @type {any} */ (emitter)[TAPPED]) {
      throw new Error(
        `tap(emitter): this emitter is already tapped (emitterId "${/** @type {any} */ (emitter)[TAPPED].emitterId}"); close() that tap first`,
      );
    }
    this.#opts = resolveOptions(options);
    this.#emitter = emitter;
    this.#queue = new BoundedQueue(this.#opts.maxBuffered);
    this.#batchLimit = this.#opts.batchSize;
    const userKafka = /** @type {Record<string, any>} */ (this.#opts.kafka);
    this.#kafka = new Kafka({
      ...userKafka,
      // kafkajs retries each connect/produce internally first (5 times by default); cap its
      // backoff so delivery resumes within seconds of the broker coming back. No `retries` key:
      // setting one makes kafkajs warn that the idempotent producer's retries are limited.
      retry: { maxRetryTime: KAFKAJS_MAX_RETRY_MS, ...(userKafka.retry || {}) },
      clientId: this.#opts.clientId,
      brokers: this.#opts.brokers,
      logLevel: this.#opts.logLevel,
      ...(this.#opts.logCreator ? { logCreator: /** @type {any} */ (this.#opts.logCreator) } : {}),
    });
    this.#logger = this.#kafka.logger().namespace('LegacyTap');
    this.#hook();
  }

  /** @returns {string} the "emitter" field of the messages */
  get emitterId() {
    return this.#opts.emitterId;
  }

  /** @returns {string} the topic the messages go to */
  get topic() {
    return this.#opts.topic;
  }

  /**
   * Counters since the tap was created (a fresh object each call).
   * @returns {TapStats}
   */
  stats() {
    return {
      emitted: this.#seq,
      forwarded: this.#counts.forwarded,
      buffered: this.#queue.length + this.#inFlight.length,
      inFlight: this.#inFlight.length,
      dropped: this.#counts.dropped,
      oversized: this.#counts.oversized,
      unserializable: this.#counts.unserializable,
      failedAttempts: this.#counts.failedAttempts,
      callbackErrors: this.#counts.callbackErrors,
      lastError: this.#lastError,
      connected: this.#connected,
      closed: this.#closePromise !== null,
    };
  }

  /**
   * Resolves once nothing is buffered: every message captured so far was acknowledged by Kafka (or
   * dropped and reported through 'dropped'). Waits as long as the broker is unreachable unless
   * timeoutMs is given; on timeout it rejects with TapFlushTimeoutError and the messages stay buffered.
   *
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<void>}
   */
  flush(options = {}) {
    const timeoutMs = options.timeoutMs === undefined ? Infinity : options.timeoutMs;
    if (this.#idle()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      /** @type {{resolve: () => void, reject: (e: Error) => void, timer: NodeJS.Timeout|null}} */
      const waiter = { resolve, reject, timer: null };
      if (Number.isFinite(timeoutMs)) {
        waiter.timer = setTimeout(() => {
          this.#flushWaiters.delete(waiter);
          const s = this.stats();
          reject(
            new TapFlushTimeoutError(
              `flush timed out after ${timeoutMs} ms with ${s.buffered} message(s) still buffered` +
                (s.lastError ? `; last error: ${s.lastError}` : ''),
              { buffered: s.buffered, stats: s },
            ),
          );
        }, timeoutMs);
      }
      this.#flushWaiters.add(waiter);
      this.#scheduleDrain();
    });
  }

  /**
   * Unhooks emit (later emissions are not captured), delivers what is buffered (for at most
   * timeoutMs, default options.closeTimeoutMs = 30 s), then disconnects. Resolves with the final
   * stats; if messages could not be delivered in time they are dropped (reason 'closed', counted in
   * stats().dropped) and the promise rejects with TapCloseError ({undelivered, stats}). Idempotent.
   *
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<TapStats>}
   */
  close(options = {}) {
    if (this.#closePromise === null) {
      const timeoutMs = options.timeoutMs === undefined ? this.#opts.closeTimeoutMs : options.timeoutMs;
      this.#closePromise = this.#close(timeoutMs);
    }
    return this.#closePromise;
  }

  // ---- capture ------------------------------------------------------------------------------

  #hook() {
    const emitter = /** @type {any} */ (this.#emitter);
    const original = emitter.emit;
    const hadOwn = Object.prototype.hasOwnProperty.call(emitter, 'emit');
    const self = this;
    /**
     * @this {unknown}
     * @param {string|symbol} name
     */
    function emit(name) {
      if (self.#active && typeof name === 'string' && EVENTS.has(name)) self.#capture(name, arguments[1]);
      // eslint-disable-next-line prefer-rest-params
      return Reflect.apply(original, this, arguments);
    }
    emitter.emit = emit;
    Object.defineProperty(emitter, TAPPED, { value: this, configurable: true, enumerable: false });
    this.#unhook = () => {
      this.#active = false;
      if (emitter.emit === emit) {
        if (hadOwn) emitter.emit = original;
        else delete emitter.emit;
      } // else someone wrapped emit after us: our wrapper stays in their chain as a pass-through
      delete emitter[TAPPED];
    };
  }

  /**
   * Called synchronously inside emit(), before the listeners run; never throws.
   * @param {string} event
   * @param {unknown} data
   */
  #capture(event, data) {
    this.#seq += 1;
    const seq = this.#seq;
    /** @type {string|null} */
    let key = null;
    try {
      const payload = data === undefined ? null : data;
      if (payload !== null && typeof payload === 'object') {
        const id = /** @type {any} */ (payload).assessmentId;
        if (typeof id === 'string') key = id;
      }
      const value = JSON.stringify({
        event,
        data: payload,
        emittedAt: new Date().toISOString(),
        seq,
        emitter: this.#opts.emitterId,
      });
      const bytes = Buffer.byteLength(value, 'utf8') + (key === null ? 0 : Buffer.byteLength(key, 'utf8'));
      if (bytes > this.#opts.maxMessageBytes) {
        this.#counts.oversized += 1;
        this.#reportDrop({ reason: 'oversized', count: 1, firstSeq: seq, lastSeq: seq, event, assessmentId: key, bytes });
        return;
      }
      const evicted = this.#queue.push({ seq, key, value, bytes });
      if (evicted.length > 0) this.#recordLost(evicted, 'overflow');
      this.#scheduleDrain();
    } catch (err) {
      this.#counts.unserializable += 1;
      const error = describeError(err);
      this.#lastError = `serialize ${event} seq ${seq}: ${error}`;
      this.#reportDrop({ reason: 'unserializable', count: 1, firstSeq: seq, lastSeq: seq, event, assessmentId: key, error });
    }
  }

  // ---- delivery -----------------------------------------------------------------------------

  #idle() {
    return this.#queue.length === 0 && this.#inFlight.length === 0;
  }

  #scheduleDrain() {
    if (this.#drainPromise !== null || this.#stopped || this.#queue.length === 0) return;
    // setImmediate: emissions of the same tick go out in one batch.
    this.#drainPromise = new Promise((resolve) => setImmediate(resolve))
      .then(() => this.#drain())
      .catch((err) => {
        // #drain handles its own errors; reaching here is a bug in the tap, not a Kafka failure.
        this.#recordFailure('delivery loop', err);
        this.#logger.error('delivery loop crashed; it restarts on the next emission', { error: describeError(err) });
      })
      .finally(() => {
        this.#drainPromise = null;
        this.#settleFlushWaiters();
        if (!this.#stopped && this.#queue.length > 0) this.#scheduleDrain();
      });
  }

  async #drain() {
    let failures = 0;
    while (!this.#stopped && this.#queue.length > 0) {
      const producer = this.#producer || this.#newProducer();
      if (!this.#connected) {
        try {
          await producer.connect();
          this.#connected = true;
        } catch (err) {
          if (this.#abandoned) return;
          failures += 1;
          this.#recordFailure('connect', err);
          await this.#backoff(failures);
          continue;
        }
        if (this.#stopped) break;
      }
      const batch = this.#queue.take(this.#batchLimit, this.#opts.maxBatchBytes, (m) => m.bytes);
      this.#inFlight = batch;
      /** @type {unknown} */
      let failure = null;
      try {
        await producer.send({
          topic: this.#opts.topic,
          acks: -1,
          messages: batch.map((m) => ({ key: m.key, value: m.value })),
        });
      } catch (err) {
        failure = err;
      }
      if (this.#abandoned) return; // close() gave up on this request and counted it as dropped
      this.#inFlight = [];
      if (failure === null) {
        this.#counts.forwarded += batch.length;
        failures = 0;
        this.#batchLimit = Math.min(this.#opts.batchSize, this.#batchLimit * 2);
        this.#settleFlushWaiters();
        continue;
      }
      failures += 1;
      this.#recordFailure('send', failure);
      if (this.#stopped) {
        this.#recordLost(batch, 'closed');
        break;
      }
      const tooLarge = TOO_LARGE.some((t) => protocolErrorTypes(failure).has(t));
      if (tooLarge && batch.length === 1) {
        // The broker (or the topic's max.message.bytes) refuses this one message: it can never go.
        const m = batch[0];
        this.#counts.oversized += 1;
        this.#reportDrop({
          reason: 'oversized',
          count: 1,
          firstSeq: m.seq,
          lastSeq: m.seq,
          assessmentId: m.key,
          bytes: m.bytes,
          error: describeError(failure),
        });
        failures = 0;
        continue;
      }
      if (tooLarge) this.#batchLimit = Math.max(1, Math.floor(batch.length / 2));
      const evicted = this.#queue.unshiftAll(batch);
      if (evicted.length > 0) this.#recordLost(evicted, 'overflow');
      // After a failed send the idempotent producer's sequence numbers may be out of step with
      // the broker; a new producer (new producer id) resends the batch cleanly (at least once).
      await this.#discardProducer();
      if (!tooLarge) await this.#backoff(failures);
    }
  }

  #newProducer() {
    const producer = this.#kafka.producer({
      idempotent: true,
      maxInFlightRequests: 1,
      allowAutoTopicCreation: false,
      createPartitioner: Partitioners.DefaultPartitioner,
    });
    producer.on(producer.events.DISCONNECT, () => {
      if (this.#producer === producer) this.#connected = false;
    });
    this.#producer = producer;
    this.#connected = false;
    return producer;
  }

  async #discardProducer() {
    const producer = this.#producer;
    this.#producer = null;
    this.#connected = false;
    if (producer === null) return;
    try {
      await producer.disconnect();
    } catch (err) {
      this.#recordFailure('disconnect', err, false);
    }
  }

  /**
   * @param {number} failures consecutive failed attempts
   * @returns {Promise<void>}
   */
  #backoff(failures) {
    if (this.#stopped) return Promise.resolve();
    const { initialRetryTime, maxRetryTime } = this.#opts.retry;
    const base = Math.min(maxRetryTime, initialRetryTime * 2 ** Math.min(failures - 1, 30));
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    return new Promise(/** @param {(value?: void) => void} resolve */ (resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = null;
        resolve();
      };
      const timer = setTimeout(done, delay);
      this.#wake = done;
    });
  }

  #settleFlushWaiters() {
    if (!this.#idle()) return;
    for (const waiter of this.#flushWaiters) {
      if (waiter.timer) clearTimeout(waiter.timer);
      waiter.resolve();
    }
    this.#flushWaiters.clear();
  }

  /** @param {number} timeoutMs */
  async #close(timeoutMs) {
    if (this.#unhook) this.#unhook();
    /** @type {unknown} */
    let flushError = null;
    try {
      await this.flush({ timeoutMs });
    } catch (err) {
      flushError = err;
    }
    this.#stopped = true;
    if (this.#wake) this.#wake();
    const dropped = this.#counts.dropped;
    const left = this.#queue.clear();
    if (left.length > 0) this.#recordLost(left, 'closed');
    // Disconnecting ends a produce request still under way; its batch is then counted as 'closed'.
    await this.#discardProducer();
    if (this.#drainPromise && !(await settlesWithin(this.#drainPromise, CLOSE_GRACE_MS))) {
      // kafkajs cannot abort a connect() or send() in its own retry loop; stop waiting for it.
      this.#abandoned = true;
      const inFlight = this.#inFlight;
      this.#inFlight = [];
      if (inFlight.length > 0) this.#recordLost(inFlight, 'closed');
      this.#logger.warn(`kafkajs is still retrying after close(); its outcome is ignored`, {
        graceMs: CLOSE_GRACE_MS,
      });
    }
    this.#settleFlushWaiters();
    const stats = this.stats();
    const undelivered = stats.dropped - dropped;
    if (flushError !== null || undelivered > 0) {
      throw new TapCloseError(
        `closed with ${undelivered} undelivered message(s) after ${timeoutMs} ms; ` +
          (stats.lastError ? `last error: ${stats.lastError}` : 'no delivery attempt had finished (still connecting?)'),
        { undelivered, stats },
      );
    }
    return stats;
  }

  // ---- accounting ---------------------------------------------------------------------------

  /**
   * @param {string} operation
   * @param {unknown} err
   * @param {boolean} [attempt] whether it counts as a failed delivery attempt
   */
  #recordFailure(operation, err, attempt = true) {
    if (attempt) this.#counts.failedAttempts += 1;
    this.#lastError = `${operation}: ${describeError(err)}`;
    this.#logger.warn(`${operation} failed`, {
      error: this.#lastError,
      buffered: this.#queue.length + this.#inFlight.length,
      failedAttempts: this.#counts.failedAttempts,
    });
  }

  /**
   * Buffered messages given up (evicted on overflow, or left at close).
   * @param {Buffered[]} messages oldest first
   * @param {'overflow'|'closed'} reason
   */
  #recordLost(messages, reason) {
    this.#counts.dropped += messages.length;
    this.#reportDrop({ reason, count: messages.length, firstSeq: messages[0].seq, lastSeq: messages[messages.length - 1].seq });
  }

  /**
   * Notifies 'dropped' listeners and onDrop on the next tick (never inside the legacy emit() call,
   * so their errors cannot reach the legacy code). Consecutive drops of one reason within a tick
   * are merged into one notification.
   * @param {DropInfo} info
   */
  #reportDrop(info) {
    const last = this.#pendingDrops[this.#pendingDrops.length - 1];
    if (last && last.reason === info.reason && (info.reason === 'overflow' || info.reason === 'closed')) {
      last.count += info.count;
      last.lastSeq = info.lastSeq;
      return;
    }
    this.#pendingDrops.push({ ...info });
    if (this.#pendingDrops.length === 1) process.nextTick(() => this.#deliverDropNotices());
  }

  #deliverDropNotices() {
    const notices = this.#pendingDrops;
    this.#pendingDrops = [];
    for (const info of notices) {
      this.#logger.warn(`dropped ${info.count} message(s): ${info.reason}`, { ...info, emitter: this.#opts.emitterId });
      try {
        this.emit('dropped', info);
      } catch (err) {
        this.#callbackFailed("a 'dropped' listener", err);
      }
      if (this.#opts.onDrop) {
        try {
          this.#opts.onDrop(info);
        } catch (err) {
          this.#callbackFailed('onDrop', err);
        }
      }
    }
  }

  /**
   * @param {string} what
   * @param {unknown} err
   */
  #callbackFailed(what, err) {
    this.#counts.callbackErrors += 1;
    this.#lastError = `${what} threw: ${describeError(err)}`;
    this.#logger.error(`${what} threw`, { error: describeError(err) });
  }
}

/**
 * Forwards every emission of the legacy lifecycle events (assessment.created, .started, .progress,
 * .completed, .failed, .cancelled) of `emitter` to Kafka as
 * {"event", "data", "emittedAt", "seq", "emitter"} JSON, keyed by data.assessmentId.
 *
 * emitter.emit is wrapped (so emissions without listeners are seen too); its return value,
 * listeners and the errors they throw are unchanged. Delivery is asynchronous, batched, idempotent
 * (acks=all, one request in flight) and retried with backoff; the buffer is bounded (oldest dropped
 * and counted when full). Call close() before the process ends.
 *
 * @param {EventEmitter} emitter the legacy service's EventEmitter
 * @param {TapOptions} [options]
 * @returns {LegacyTap}
 * @throws {TypeError} on a bad emitter or option; {Error} if the emitter is already tapped
 */
function tap(emitter, options = {}) {
  return new LegacyTap(emitter, options);
}

module.exports = { tap, LegacyTap, LEGACY_EVENTS };
