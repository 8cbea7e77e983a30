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

const crypto = require('node:crypto');

const TWO_64 = 1n << 64n;
const STATUSES_WITH_DURATION = new Set(['completed', 'failed']);
const EXPONENT = /^(-?)(\d+)(?:\.(\d+))?e([+-]\d+)$/;
const NOT_ASCII = /[^\x00-\x7f]/;

/**
 * @param {number} n
 * @returns {string} the plain decimal PostgreSQL's numeric prints: never an exponent
 */
function plainNumber(n) {
  if (!Number.isFinite(n)) return 'null';
  const s = String(n);
  // Only very large or very small magnitudes print with an exponent; the regex is for those alone.
  if (!s.includes('e')) return s;
  const m = EXPONENT.exec(s);
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
 * jsonb's key order: UTF-8 byte length, then bytes. For two ASCII keys that is length, then UTF-16 code
 * units (equal to the bytes), compared without encoding anything; other keys are encoded.
 * @param {string} a
 * @param {string} b
 */
function jsonbKeyOrder(a, b) {
  if (!NOT_ASCII.test(a) && !NOT_ASCII.test(b)) {
    return a.length - b.length || (a < b ? -1 : a > b ? 1 : 0);
  }
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
    case 'object': {
      // Built by concatenation: this runs once per record and field on a checksum pass over a million.
      if (Array.isArray(value)) {
        let out = '[';
        for (let i = 0; i < value.length; i++) out += (i === 0 ? '' : ', ') + jsonbText(value[i]);
        return `${out}]`;
      }
      const obj = /** @type {Record<string, unknown>} */ (value);
      const keys = Object.keys(obj);
      if (keys.length > 1) keys.sort(jsonbKeyOrder);
      let out = '{';
      let first = true;
      for (const k of keys) {
        const v = obj[k];
        if (v === undefined) continue;
        out += `${first ? '' : ', '}${JSON.stringify(k)}: ${jsonbText(v)}`;
        first = false;
      }
      return `${out}}`;
    }
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

// The one-shot digest (Node >= 20.12) allocates no Hash object per call: a checksum pass calls it twice
// per record.
const oneShot = /** @type {((alg: string, data: string, enc: string) => string) | undefined} */ (
  /** @type {any} */ (crypto).hash);

/** @param {string} text */
function md5Hex(text) {
  return oneShot !== undefined ? oneShot('md5', text, 'hex') : crypto.createHash('md5').update(text, 'utf8').digest('hex');
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
