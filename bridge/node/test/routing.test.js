'use strict';

const { test } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const fs = require('node:fs');
const { routeToStore, bucket, threshold, BUCKETS } = require('..');

const VECTORS_FILE = path.join(__dirname, '..', '..', 'routing_vectors.json');
/** @type {{algorithm: string, vectors: Array<{key: string, salt: string, bucket: number, percentage: number, routeToStore: boolean}>}} */
const shared = JSON.parse(fs.readFileSync(VECTORS_FILE, 'utf8'));

test('the shared vectors (made by an independent implementation) all match', () => {
  assert.ok(typeof shared.algorithm === 'string' && shared.algorithm.includes('SHA-256'));
  assert.ok(shared.vectors.length >= 200, `only ${shared.vectors.length} vectors`);
  const mismatches = [];
  for (const v of shared.vectors) {
    const b = bucket(v.key, v.salt);
    const r = routeToStore(v.key, v.percentage, v.salt);
    if (b !== v.bucket || r !== v.routeToStore) {
      mismatches.push({ key: v.key.slice(0, 40), salt: v.salt, percentage: v.percentage, want: [v.bucket, v.routeToStore], got: [b, r] });
    }
  }
  assert.deepEqual(mismatches, []);
});

test('the shared vectors cover the edge cases', () => {
  const keys = new Set(shared.vectors.map((v) => v.key));
  const percentages = new Set(shared.vectors.map((v) => v.percentage));
  for (const k of ['', 'ümlaut-ß-日本']) assert.ok(keys.has(k), `no vector for key ${JSON.stringify(k)}`);
  assert.ok([...keys].some((k) => k.length >= 4096), 'no long key');
  for (const p of [0, 100, 0.01, 99.99, 50, 30, 12.34]) assert.ok(percentages.has(p), `no vector at ${p} %`);
  assert.ok(shared.vectors.some((v) => v.routeToStore) && shared.vectors.some((v) => !v.routeToStore));
});

test('percentage maps to a bucket threshold, halves rounded up', () => {
  assert.equal(threshold(0), 0);
  assert.equal(threshold(30), 3000);
  assert.equal(threshold(12.34), 1234); // 12.34 * 100 = 1233.9999999999998
  assert.equal(threshold(0.01), 1);
  assert.equal(threshold(99.99), 9999);
  assert.equal(threshold(100), BUCKETS);
  assert.equal(threshold(0.125), 13); // a tie: up, not to even (Python's round() would give 12)
  for (let i = 0; i < 1000; i += 1) {
    const key = `k${i}`;
    assert.equal(routeToStore(key, 0, 's'), false);
    assert.equal(routeToStore(key, 100, 's'), true);
    const b = bucket(key, 's');
    assert.ok(Number.isInteger(b) && b >= 0 && b < BUCKETS);
    assert.equal(routeToStore(key, 30, 's'), b < 3000);
  }
});

test('bad arguments are refused with clear errors', () => {
  for (const p of [-0.01, 100.01, NaN, Infinity, -Infinity, '30', null, undefined]) {
    assert.throws(() => routeToStore('a', /** @type {any} */ (p), 's'), RangeError, `percentage ${String(p)}`);
  }
  assert.throws(() => routeToStore('a', 101, 's'), /percentage must be a finite number in \[0, 100\], got 101/);
  for (const k of [1, null, undefined, {}, Symbol('x')]) {
    assert.throws(() => bucket(/** @type {any} */ (k), 's'), TypeError);
  }
  assert.throws(() => bucket('a', /** @type {any} */ (undefined)), /salt must be a string/);
  assert.throws(() => bucket('\ud800', 's'), /lone UTF-16 surrogate/);
});

test('routing is sticky: same answer every time, and a growing rollout never takes a key back', () => {
  const steps = [0, 1, 5, 10, 25, 50, 75, 90, 95, 99, 100];
  for (let i = 0; i < 2000; i += 1) {
    const key = `assessment-${i}`;
    const first = steps.map((p) => routeToStore(key, p, 'rollout'));
    const again = steps.map((p) => routeToStore(key, p, 'rollout'));
    assert.deepEqual(again, first);
    const firstIn = first.indexOf(true);
    assert.ok(firstIn >= 0);
    assert.ok(first.slice(firstIn).every(Boolean), `key ${key} left the store as the rollout grew`);
  }
});

test('30 % of 100,000 keys are routed, within +-1 %', () => {
  let routed = 0;
  const n = 100000;
  for (let i = 0; i < n; i += 1) if (routeToStore(`assessment-${i}-${i * 7919}`, 30, 'dist')) routed += 1;
  const share = (routed / n) * 100;
  assert.ok(share >= 29 && share <= 31, `routed ${share.toFixed(3)} %`);
});

test('a different salt reshuffles the keys', () => {
  let same = 0;
  for (let i = 0; i < 10000; i += 1) {
    if (routeToStore(`k-${i}`, 50, 'a') === routeToStore(`k-${i}`, 50, 'b')) same += 1;
  }
  assert.ok(same > 4500 && same < 5500, `${same} of 10000 kept their route across salts`);
});
