'use strict';

// The canonical form (src/canonical.js) against the vectors the Python tests also check, and the export
// endpoints of the HTTP face (src/export-routes.js) on a handler without Kafka.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const c = require('../src/canonical');
const { createHandler } = require('../src/http');
const { LegacyAssessmentService } = require('../src/legacy-service');

const VECTORS = JSON.parse(fs.readFileSync(path.join(__dirname, '..', '..', '..', 'migration', 'canonical_vectors.json'), 'utf8'));

test('every canonical vector: text, row hash, id hash, bucket and bucket checksums', () => {
  for (const v of VECTORS.vectors) {
    assert.equal(c.canonicalText(v.record), v.canonical, v.record.assessmentId);
    assert.equal(c.rowHash(v.record).toString(16).padStart(16, '0'), v.rowHash);
    assert.equal(c.idHash(v.record.assessmentId), v.idHash);
    assert.equal(c.bucketOf(v.record.assessmentId, 4096), v.bucket4096);
  }
  const service = new LegacyAssessmentService();
  const byId = new Map(VECTORS.vectors.map((v) => [v.record.assessmentId, v.record]));
  for (const id of VECTORS.checksums.records) service.restoreRecord(byId.get(id));
  const { total, checksums } = service.checksums(VECTORS.checksums.buckets);
  assert.equal(total, VECTORS.checksums.records.length);
  assert.deepEqual(checksums, VECTORS.checksums.checksums);
});

/** @param {(port: number) => Promise<void>} body */
async function withServer(service, body) {
  const server = http.createServer(createHandler(service));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(undefined)));
  const address = server.address();
  try {
    await body(typeof address === 'object' && address ? address.port : 0);
  } finally {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(() => resolve(undefined)));
  }
}

test('snapshot restore, streamed export by bucket, checksums that follow every change', async () => {
  const service = new LegacyAssessmentService();
  const emitted = [];
  service.on('assessment.created', (d) => emitted.push(d));
  await withServer(service, async (port) => {
    const base = `http://127.0.0.1:${port}`;
    const lines = [];
    for (let i = 0; i < 300; i += 1) {
      lines.push(JSON.stringify({ assessmentId: `x-${i}`, status: 'pending', progress: 0, message: null, request: { i },
        result: null, error: null, timestamp: '2024-05-01T12:00:00.000Z', updatedAt: '2024-05-01T12:00:00.000Z', duration: null }));
    }
    lines.push('not json', JSON.stringify({ status: 'pending' }));
    const restored = await fetch(`${base}/snapshot`, { method: 'POST', body: `${lines.join('\n')}\n` });
    assert.deepEqual(await restored.json(), { loaded: 300, replaced: 0, invalid: 2 });
    assert.equal(emitted.length, 0, 'a restore emits nothing for the tap');

    const all = (await (await fetch(`${base}/export`)).text()).trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(all.length, 300);
    assert.deepEqual(all[7], JSON.parse(lines[7]));

    const before = await (await fetch(`${base}/export/checksums?buckets=16`)).json();
    assert.equal(before.total, 300);
    assert.equal(before.checksums.reduce((n, [, count]) => n + count, 0), 300);
    const wanted = before.checksums.slice(0, 3).map(([b]) => b);
    const some = (await (await fetch(`${base}/export?buckets=16&bucket=${wanted.join(',')}`)).text())
      .trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(some.length, before.checksums.slice(0, 3).reduce((n, [, count]) => n + count, 0));
    assert.ok(some.every((r) => wanted.includes(c.bucketOf(r.assessmentId, 16))));

    service.startAssessment('x-5');
    const after = await (await fetch(`${base}/export/checksums?buckets=16`)).json();
    const changed = after.checksums.filter(([b, n, s], i) => before.checksums[i][2] !== s).map(([b]) => b);
    assert.deepEqual(changed, [c.bucketOf('x-5', 16)]);

    const scoped = await (await fetch(`${base}/export/checksums?buckets=4&idPrefix=x-1`)).json();
    assert.equal(scoped.total, 111); // x-1, x-10..x-19, x-100..x-199

    const bad = await fetch(`${base}/export/checksums?buckets=0`);
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).field, 'buckets');
    const badBucket = await fetch(`${base}/export?buckets=4&bucket=9`);
    assert.equal(badBucket.status, 400);
  });
});
