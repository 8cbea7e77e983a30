'use strict';

/**
 * Sticky percentage routing shared with the Python bridge.
 *
 * The algorithm is a cross-language contract (the Python side implements the same one and both are
 * checked against ../routing_vectors.json):
 *
 *   h         = SHA-256 of the UTF-8 bytes of `${salt}:${key}`
 *   bucket    = (first 8 bytes of h as an unsigned big-endian 64-bit integer) mod 10000
 *   threshold = round(percentage * 100), halves rounded up (JavaScript Math.round on the double)
 *   route     = bucket < threshold
 *
 * So 30 % routes buckets 0..2999 and 12.34 % routes buckets 0..1233; raising the percentage only
 * ever adds buckets, so a key routed to the store stays there as a rollout grows.
 */

const { createHash } = require('node:crypto');

/** Number of buckets; a percentage has a resolution of 100 / BUCKETS = 0.01 %. */
const BUCKETS = 10000;
const BUCKETS_BIG = BigInt(BUCKETS);

/**
 * @param {unknown} value
 * @param {string} name
 * @returns {string}
 */
function requireWellFormedString(value, name) {
  if (typeof value !== 'string') {
    throw new TypeError(`${name} must be a string, got ${value === null ? 'null' : typeof value}`);
  }
  if (!value.isWellFormed()) {
    throw new TypeError(`${name} contains a lone UTF-16 surrogate and has no UTF-8 encoding`);
  }
  return value;
}

/**
 * The bucket of a key: SHA-256(`${salt}:${key}`) read as an unsigned big-endian 64-bit integer from
 * its first 8 bytes, modulo 10000.
 *
 * @param {string} key  routing key, e.g. an assessment id (any well-formed string, may be empty)
 * @param {string} salt rollout salt; changing it reshuffles every key (may be empty)
 * @returns {number} integer in [0, 10000)
 * @throws {TypeError} when key or salt is not a well-formed string
 */
function bucket(key, salt) {
  requireWellFormedString(key, 'key');
  requireWellFormedString(salt, 'salt');
  const digest = createHash('sha256').update(`${salt}:${key}`, 'utf8').digest();
  return Number(digest.readBigUInt64BE(0) % BUCKETS_BIG);
}

/**
 * Number of buckets (out of 10000) routed to the store for a percentage: round(percentage * 100),
 * halves up.
 *
 * @param {number} percentage in [0, 100]
 * @returns {number} integer in [0, 10000]
 * @throws {RangeError} when percentage is not a finite number in [0, 100]
 */
function threshold(percentage) {
  if (typeof percentage !== 'number' || !Number.isFinite(percentage) || percentage < 0 || percentage > 100) {
    throw new RangeError(`percentage must be a finite number in [0, 100], got ${String(percentage)}`);
  }
  return Math.round(percentage * 100);
}

/**
 * Whether a key is routed to the AssessmentStore at a rollout percentage. Sticky: the same key and
 * salt always give the same answer, and a key routed at p % is routed at every percentage above p.
 *
 * @param {string} key        routing key, e.g. an assessment id
 * @param {number} percentage share of keys routed to the store, a number in [0, 100] (0.01 resolution)
 * @param {string} salt       rollout salt (the same on every instance and on the Python side)
 * @returns {boolean} true when bucket(key, salt) < round(percentage * 100)
 * @throws {RangeError} when percentage is outside [0, 100] or not finite
 * @throws {TypeError} when key or salt is not a well-formed string
 */
function routeToStore(key, percentage, salt) {
  const limit = threshold(percentage);
  return bucket(key, salt) < limit;
}

module.exports = { BUCKETS, bucket, threshold, routeToStore };
