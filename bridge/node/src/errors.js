'use strict';

/** Base class of the errors this package throws or rejects with. */
class LegacyTapError extends Error {
  /** @param {string} message @param {object} [details] */
  constructor(message, details = {}) {
    super(message);
    this.name = this.constructor.name;
    Object.assign(this, details);
  }
}

/** flush({ timeoutMs }) ran out of time with messages still buffered (they stay buffered). */
class TapFlushTimeoutError extends LegacyTapError {}

/** close() could not deliver everything: `undelivered` messages were dropped (and counted). */
class TapCloseError extends LegacyTapError {}

/**
 * The readable "Name: message" of an error, with the cause kafkajs wraps in its retry errors.
 * @param {unknown} err
 * @returns {string}
 */
function describeError(err) {
  if (!(err instanceof Error)) return String(err);
  const type = /** @type {any} */ (err).type;
  let text = typeof type === 'string' ? `${err.name} [${type}]: ${err.message}` : `${err.name}: ${err.message}`;
  const cause = /** @type {any} */ (err).cause;
  if (cause instanceof Error && cause !== err && !err.message.includes(cause.message)) {
    text += ` (cause: ${cause.name}: ${cause.message})`;
  }
  return text;
}

/**
 * Kafka protocol error types (e.g. 'MESSAGE_TOO_LARGE') found on an error, its causes and, for
 * kafkajs aggregate errors, its members.
 * @param {unknown} err
 * @returns {Set<string>}
 */
function protocolErrorTypes(err) {
  const types = new Set();
  const seen = new Set();
  const stack = [err];
  while (stack.length > 0) {
    const e = /** @type {any} */ (stack.pop());
    if (e === null || typeof e !== 'object' || seen.has(e)) continue;
    seen.add(e);
    if (typeof e.type === 'string') types.add(e.type);
    stack.push(e.cause, e.originalError);
    if (Array.isArray(e.errors)) stack.push(...e.errors);
  }
  return types;
}

module.exports = { LegacyTapError, TapFlushTimeoutError, TapCloseError, describeError, protocolErrorTypes };
