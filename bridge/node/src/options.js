'use strict';

const fs = require('node:fs');
const os = require('node:os');
const { logLevel: KafkaLogLevel } = require('kafkajs');

/** The legacy service's lifecycle events the tap forwards. */
const LEGACY_EVENTS = Object.freeze([
  'assessment.created',
  'assessment.started',
  'assessment.progress',
  'assessment.completed',
  'assessment.failed',
  'assessment.cancelled',
]);

const DEFAULT_BROKERS = '127.0.0.1:19092';

const DEFAULTS = Object.freeze({
  topic: 'legacy.assessment-events',
  maxBuffered: 10000,
  maxMessageBytes: 900000,
  batchSize: 500,
  maxBatchBytes: 900000,
  clientId: 'assessment-legacy-tap',
  logLevel: 'warn',
  retry: Object.freeze({ initialRetryTime: 100, maxRetryTime: 30000 }),
  closeTimeoutMs: 30000,
});

const KNOWN_OPTIONS = new Set([
  ...Object.keys(DEFAULTS),
  'brokers',
  'emitterId',
  'onDrop',
  'kafka',
  'logCreator',
]);

const LOG_LEVELS = Object.freeze({
  nothing: KafkaLogLevel.NOTHING,
  error: KafkaLogLevel.ERROR,
  warn: KafkaLogLevel.WARN,
  info: KafkaLogLevel.INFO,
  debug: KafkaLogLevel.DEBUG,
});

/**
 * @typedef {object} TapOptions
 * @property {string|string[]} [brokers] bootstrap brokers, "host:port" (comma-separated string or
 *   array); default env KAFKA_BOOTSTRAP, else '127.0.0.1:19092'
 * @property {string} [topic] default 'legacy.assessment-events'
 * @property {string} [emitterId] the "emitter" field; default `${hostname}-${pid}` (with `-2`, `-3`,
 *   ... for further taps in the same process)
 * @property {number} [maxBuffered] messages waiting for delivery before the oldest are dropped; default 10000
 * @property {number} [maxMessageBytes] a message (JSON + key) larger than this is not sent; default 900000
 * @property {number} [batchSize] messages per produce request; default 500
 * @property {number} [maxBatchBytes] bytes per produce request (a single larger message goes alone); default 900000
 * @property {string} [clientId] kafkajs client id; default 'assessment-legacy-tap'
 * @property {'nothing'|'error'|'warn'|'info'|'debug'|number} [logLevel] default 'warn'
 * @property {Function} [logCreator] kafkajs logCreator, to route the logs into the service's logger
 * @property {{initialRetryTime?: number, maxRetryTime?: number}} [retry] the tap's backoff between
 *   failed delivery attempts (ms, doubling, +-20 % jitter); default 100 .. 30000
 * @property {number} [closeTimeoutMs] how long close() tries to deliver what is buffered; default 30000
 * @property {(info: DropInfo) => void} [onDrop] called (like the 'dropped' event) when messages are dropped
 * @property {object} [kafka] extra kafkajs client config (ssl, sasl, connectionTimeout, requestTimeout, retry, ...);
 *   ssl and sasl default to securityFromEnv() (KAFKA_SECURITY_PROTOCOL, KAFKA_USERNAME, ...)
 */

/**
 * @typedef {object} DropInfo
 * @property {'overflow'|'oversized'|'unserializable'|'closed'} reason
 * @property {number} count messages dropped by this occurrence
 * @property {number} [firstSeq] seq of the first dropped message
 * @property {number} [lastSeq] seq of the last dropped message
 * @property {string} [event] the event name (oversized, unserializable)
 * @property {string|null} [assessmentId] (oversized, unserializable)
 * @property {number} [bytes] size of the message (oversized)
 * @property {string} [error] why (unserializable, oversized rejected by the broker)
 */

let defaultEmitterIds = 0;

/** @returns {string} */
function nextDefaultEmitterId() {
  defaultEmitterIds += 1;
  const base = `${os.hostname()}-${process.pid}`;
  return defaultEmitterIds === 1 ? base : `${base}-${defaultEmitterIds}`;
}

/**
 * @param {unknown} value
 * @returns {string[]}
 */
function parseBrokers(value) {
  const list = Array.isArray(value) ? value : String(value).split(',');
  const brokers = list.map((b) => String(b).trim()).filter((b) => b.length > 0);
  if (brokers.length === 0) {
    throw new TypeError(`options.brokers must name at least one "host:port", got ${JSON.stringify(value)}`);
  }
  for (const b of brokers) {
    if (!/^.+:\d+$/.test(b)) throw new TypeError(`options.brokers: "${b}" is not "host:port"`);
  }
  return brokers;
}

/**
 * @param {Record<string, unknown>} opts
 * @param {string} name
 * @param {number} min
 * @returns {number}
 */
function positiveInt(opts, name, min = 1) {
  const value = opts[name] === undefined ? /** @type {any} */ (DEFAULTS)[name] : opts[name];
  if (!Number.isInteger(value) || /** @type {number} */ (value) < min) {
    throw new RangeError(`options.${name} must be an integer >= ${min}, got ${String(value)}`);
  }
  return /** @type {number} */ (value);
}

/**
 * @param {unknown} value
 * @returns {number}
 */
function parseLogLevel(value) {
  if (value === undefined) return LOG_LEVELS[DEFAULTS.logLevel];
  if (typeof value === 'number' && Object.values(LOG_LEVELS).includes(value)) return value;
  if (typeof value === 'string' && Object.hasOwn(LOG_LEVELS, value.toLowerCase())) {
    return LOG_LEVELS[/** @type {keyof typeof LOG_LEVELS} */ (value.toLowerCase())];
  }
  throw new TypeError(
    `options.logLevel must be one of ${Object.keys(LOG_LEVELS).join(', ')} or a kafkajs logLevel number, got ${String(value)}`,
  );
}

const SECURITY_PROTOCOLS = new Set(['PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', 'SASL_SSL']);
const SASL_MECHANISMS = Object.freeze({ 'SCRAM-SHA-512': 'scram-sha-512', 'SCRAM-SHA-256': 'scram-sha-256', PLAIN: 'plain' });

/**
 * kafkajs's `ssl`/`sasl` settings from the environment, named like the Python side's settings:
 * KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL; default PLAINTEXT),
 * KAFKA_SASL_MECHANISM (SCRAM-SHA-512 default, SCRAM-SHA-256, PLAIN), KAFKA_USERNAME,
 * KAFKA_PASSWORD and KAFKA_SSL_CAFILE (PEM; default: Node's trusted CAs). `assessment-store stack
 * credentials legacy-tap` prints them for the local authenticated stack. Every Kafka client of
 * this package starts from these; an explicit `kafka` option overrides them.
 *
 * @param {NodeJS.ProcessEnv} [env]
 * @returns {{ssl?: boolean|{ca: string[]}, sasl?: {mechanism: string, username: string, password: string}}}
 */
function securityFromEnv(env = process.env) {
  const protocol = (env.KAFKA_SECURITY_PROTOCOL || 'PLAINTEXT').toUpperCase();
  if (!SECURITY_PROTOCOLS.has(protocol)) {
    throw new TypeError(`KAFKA_SECURITY_PROTOCOL must be one of ${[...SECURITY_PROTOCOLS].join(', ')}, got ${protocol}`);
  }
  /** @type {{ssl?: boolean|{ca: string[]}, sasl?: {mechanism: string, username: string, password: string}}} */
  const out = {};
  if (protocol === 'SSL' || protocol === 'SASL_SSL') {
    out.ssl = env.KAFKA_SSL_CAFILE ? { ca: [fs.readFileSync(env.KAFKA_SSL_CAFILE, 'utf8')] } : true;
  }
  if (protocol.startsWith('SASL_')) {
    const name = (env.KAFKA_SASL_MECHANISM || 'SCRAM-SHA-512').toUpperCase();
    const mechanism = /** @type {Record<string, string>} */ (SASL_MECHANISMS)[name];
    if (mechanism === undefined) {
      throw new TypeError(`KAFKA_SASL_MECHANISM must be one of ${Object.keys(SASL_MECHANISMS).join(', ')}, got ${name}`);
    }
    if (!env.KAFKA_USERNAME || !env.KAFKA_PASSWORD) {
      throw new TypeError(`KAFKA_SECURITY_PROTOCOL=${protocol} needs KAFKA_USERNAME and KAFKA_PASSWORD`);
    }
    out.sasl = { mechanism, username: env.KAFKA_USERNAME, password: env.KAFKA_PASSWORD };
  }
  return out;
}

/**
 * Validates the tap options and fills in the defaults. Unknown option names are refused, so a
 * typo (maxBuffer for maxBuffered) does not silently fall back to a default.
 *
 * @param {TapOptions} [options]
 * @param {NodeJS.ProcessEnv} [env]
 */
function resolveOptions(options = {}, env = process.env) {
  if (options === null || typeof options !== 'object') {
    throw new TypeError(`options must be an object, got ${options === null ? 'null' : typeof options}`);
  }
  const opts = /** @type {Record<string, unknown>} */ (options);
  const unknown = Object.keys(opts).filter((k) => !KNOWN_OPTIONS.has(k));
  if (unknown.length > 0) {
    throw new TypeError(`unknown tap option(s): ${unknown.join(', ')}; known: ${[...KNOWN_OPTIONS].sort().join(', ')}`);
  }
  const topic = opts.topic === undefined ? DEFAULTS.topic : opts.topic;
  if (typeof topic !== 'string' || topic.length === 0) throw new TypeError('options.topic must be a non-empty string');
  let emitterId = opts.emitterId;
  if (emitterId === undefined) emitterId = nextDefaultEmitterId();
  if (typeof emitterId !== 'string' || emitterId.length === 0) {
    throw new TypeError('options.emitterId must be a non-empty string');
  }
  const clientId = opts.clientId === undefined ? DEFAULTS.clientId : opts.clientId;
  if (typeof clientId !== 'string' || clientId.length === 0) throw new TypeError('options.clientId must be a non-empty string');
  if (opts.onDrop !== undefined && typeof opts.onDrop !== 'function') throw new TypeError('options.onDrop must be a function');
  if (opts.logCreator !== undefined && typeof opts.logCreator !== 'function') {
    throw new TypeError('options.logCreator must be a kafkajs logCreator function');
  }
  if (opts.kafka !== undefined && (opts.kafka === null || typeof opts.kafka !== 'object')) {
    throw new TypeError('options.kafka must be an object of kafkajs client settings');
  }
  const retryIn = /** @type {Record<string, unknown>} */ (opts.retry === undefined ? {} : opts.retry);
  /** @type {{initialRetryTime: number, maxRetryTime: number}} */
  const retry = { ...DEFAULTS.retry, ...retryIn };
  for (const k of ['initialRetryTime', 'maxRetryTime']) {
    const v = /** @type {any} */ (retry)[k];
    if (!Number.isFinite(v) || v < 1) throw new RangeError(`options.retry.${k} must be a number of ms >= 1, got ${String(v)}`);
  }
  if (retry.maxRetryTime < retry.initialRetryTime) retry.maxRetryTime = retry.initialRetryTime;
  const closeTimeoutMs = opts.closeTimeoutMs === undefined ? DEFAULTS.closeTimeoutMs : opts.closeTimeoutMs;
  if (typeof closeTimeoutMs !== 'number' || !(closeTimeoutMs >= 0)) {
    throw new RangeError(`options.closeTimeoutMs must be a number >= 0 (Infinity allowed), got ${String(closeTimeoutMs)}`);
  }
  return {
    brokers: parseBrokers(opts.brokers === undefined ? env.KAFKA_BOOTSTRAP || DEFAULT_BROKERS : opts.brokers),
    topic,
    emitterId,
    clientId,
    maxBuffered: positiveInt(opts, 'maxBuffered'),
    maxMessageBytes: positiveInt(opts, 'maxMessageBytes'),
    batchSize: positiveInt(opts, 'batchSize'),
    maxBatchBytes: positiveInt(opts, 'maxBatchBytes'),
    logLevel: parseLogLevel(opts.logLevel),
    logCreator: /** @type {Function|undefined} */ (opts.logCreator),
    retry,
    closeTimeoutMs,
    onDrop: /** @type {((info: DropInfo) => void)|undefined} */ (opts.onDrop),
    kafka: /** @type {Record<string, unknown>} */ ({ ...securityFromEnv(env), ...(opts.kafka || {}) }),
  };
}

module.exports = { LEGACY_EVENTS, DEFAULTS, DEFAULT_BROKERS, resolveOptions, parseBrokers, parseLogLevel, securityFromEnv };
