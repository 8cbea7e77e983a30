'use strict';

/**
 * The canonical form of a legacy record that `assessment-store migrate validate` compares with the store
 * (docs/migration.md). PostgreSQL computes the same text for a store row with jsonb_build_array(...)::text
 * (projections/_checksums.py), so the rules below are those of jsonb's text output: objects with keys
 * ordered by UTF-8 byte length, then bytes; ", " and ": " separators; strings escaped as JSON.stringify
 * does; numbers as plain decimals (no exponent). Pinned by migration/canonical_vectors.json, which the
 * Python and the Node tests both read.
 *
 *   canonical(record) = jsonb text of [assessmentId, status, progress, message, request, result, error,
 *                                      timestampS, updatedAtS, duration]
 * (times as whole epoch seconds, rounded down: the bridge stamps the store's events with the tap's
 * emission time, a few ms after legacy's own, so the two sides agree to the second, not to the ms)
 *   rowHash           = the first 16 hex digits of md5(canonical), as an unsigned 64-bit integer
 *   bucketOf(id, n)   = the first 8 hex digits of md5(id), as an unsigned 32-bit integer, mod n
 *   bucket checksum   = the sum of its rows' hashes mod 2^64 (order-free; a duplicate row adds, never cancels)
 */

const { createHash } = require('node:crypto');

const TWO_64 = 1n << 64n;
const STATUSES_WITH_DURATION = new Set(['completed', 'failed']);

/**
 * @param {number} n
 * @returns {string} the plain decimal PostgreSQL's numeric prints: never an exponent
 */
function plainNumber(n) {
  if (!Number.isFinite(n)) return 'null';
  const s = String(n);
  const m = /^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$/.exec(s);
  if (m === null) return s;
  const [, sign, int, frac = '', exp] = m;
  const digits = int + frac;
  const point = int.length + Number(exp);
  let plain;
  if (point <= 0) plain = `0.${'0'.repeat(-point)}${digits}`;
  else if (point >= digits.length) plain = digits + '0'.repeat(point - digits.length);
  else plain = `${digits.slice(0, point)}.${digits.slice(point)}`;
  return sign + plain;
}

/**
 * @param {string} a
 * @param {string} b
 */
function jsonbKeyOrder(a, b) {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length - y.length || Buffer.compare(x, y);
}

/**
 * @param {unknown} value
 * @returns {string} the value as PostgreSQL prints it after a jsonb round trip
 */
function jsonbText(value) {
  if (value === null || value === undefined) return 'null';
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      return plainNumber(value);
    case 'string':
      return JSON.stringify(value);
    case 'object':
      if (Array.isArray(value)) return `[${value.map(jsonbText).join(', ')}]`;
      return `{${Object.keys(value)
        .filter((k) => /** @type {Record<string, unknown>} */ (value)[k] !== undefined)
        .sort(jsonbKeyOrder)
        .map((k) => `${JSON.stringify(k)}: ${jsonbText(/** @type {Record<string, unknown>} */ (value)[k])}`)
        .join(', ')}}`;
    default:
      return 'null';
  }
}

/**
 * @param {unknown} iso
 * @returns {number|null} epoch seconds (floor), null when missing or unreadable
 */
function epochSeconds(iso) {
  if (typeof iso !== 'string') return null;
  const ms = Date.parse(iso);
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : null;
}

/**
 * @param {Record<string, any>} r a legacy record (export fields; any may be missing)
 * @returns {string}
 */
function canonicalText(r) {
  const status = typeof r.status === 'string' ? r.status.toLowerCase() : null;
  // The store keeps a duration only for a completion or a failure (a cancellation has none).
  const duration = status !== null && STATUSES_WITH_DURATION.has(status) ? r.duration : null;
  return jsonbText([
    r.assessmentId, status, r.progress, r.message, r.request, r.result, r.error,
    epochSeconds(r.timestamp), epochSeconds(r.updatedAt), duration,
  ]);
}

/** @param {string} text */
function md5Hex(text) {
  return createHash('md5').update(text, 'utf8').digest('hex');
}

/**
 * @param {Record<string, any>} r
 * @returns {bigint}
 */
function rowHash(r) {
  return BigInt(`0x${md5Hex(canonicalText(r)).slice(0, 16)}`);
}

/** @param {string} assessmentId */
function idHash(assessmentId) {
  return Number.parseInt(md5Hex(assessmentId).slice(0, 8), 16);
}

/**
 * @param {string} assessmentId
 * @param {number} buckets
 */
function bucketOf(assessmentId, buckets) {
  return idHash(assessmentId) % buckets;
}

/** @param {bigint} sum */
function checksumHex(sum) {
  return (((sum % TWO_64) + TWO_64) % TWO_64).toString(16).padStart(16, '0');
}

module.exports = { bucketOf, canonicalText, checksumHex, idHash, jsonbText, plainNumber, rowHash, TWO_64 };
