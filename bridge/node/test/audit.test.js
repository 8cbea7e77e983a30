'use strict';

// The sample legacy service's audit log (src/legacy-service.js) and its endpoints GET /export/audit and
// GET /export/counts (src/export-routes.js), on a handler without Kafka.

const { test } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { createHandler } = require('../src/http');
const { LegacyAssessmentService, DEFAULT_ACTOR } = require('../src/legacy-service');

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

test('every change leaves one audit entry: actor, operation, id, statuses before and after, time', () => {
  let ms = Date.parse('2024-05-01T12:00:00.000Z');
  const service = new LegacyAssessmentService({ now: () => new Date((ms += 1000)), instanceId: 'svc', actor: 'batch' });
  const a = service.createAssessment({ q: 1 });
  service.asActor('alice', () => service.startAssessment(a));
  service.updateProgress(a, 50, 'half');
  service.completeAssessment(a, { score: 1 });
  const b = service.createAssessment(null);
  service.failAssessment(b, 'boom');
  const c = service.createAssessment(null);
  service.cancelAssessment(c);
  assert.throws(() => service.startAssessment(a));
  const log = [...service.auditEntries()];
  assert.deepEqual(log.map((e) => [e.operation, e.assessmentId, e.statusBefore, e.statusAfter, e.actor]), [
    ['create', a, null, 'pending', 'batch'],
    ['start', a, 'pending', 'processing', 'alice'],
    ['progress', a, 'processing', 'processing', 'batch'],
    ['complete', a, 'processing', 'completed', 'batch'],
    ['create', b, null, 'pending', 'batch'],
    ['fail', b, 'pending', 'failed', 'batch'],
    ['create', c, null, 'pending', 'batch'],
    ['cancel', c, 'pending', 'cancelled', 'batch'],
  ]);
  assert.deepEqual(log.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(log.map((e) => e.auditId), log.map((e) => `svc:${e.seq}`));
  assert.equal(log[0].at, '2024-05-01T12:00:01.000Z');
  assert.equal(log[3].at, service.getAssessment(a).updatedAt);
  assert.equal(new LegacyAssessmentService().createAssessment(null) && DEFAULT_ACTOR, 'legacy-service');
});

test('reverse-synced changes and restores are audited as such', () => {
  const service = new LegacyAssessmentService({ instanceId: 'svc' });
  service.importReverseMessage({ event: 'assessment.created', data: { assessmentId: 'r-1', timestamp: '2024-05-01T12:00:00Z' }, seq: 1 });
  service.importReverseMessage({ event: 'assessment.started', data: { assessmentId: 'r-1' }, seq: 2 });
  service.importReverseMessage({ event: 'assessment.started', data: { assessmentId: 'r-1' }, seq: 2 }); // duplicate
  service.restoreRecord({ assessmentId: 'r-1', status: 'completed', progress: 100 });
  const log = [...service.auditEntries()];
  assert.deepEqual(log.map((e) => [e.operation, e.statusBefore, e.statusAfter, e.actor]), [
    ['reverse-sync', null, 'pending', 'reverse-sync'],
    ['reverse-sync', 'pending', 'processing', 'reverse-sync'],
    ['restore', 'processing', 'completed', 'legacy-service'],
  ]);
});

test('GET /export/audit streams the log as JSON Lines with the x-actor header as actor; GET /export/counts', async () => {
  const service = new LegacyAssessmentService({ instanceId: 'svc' });
  await withServer(service, async (port) => {
    const base = `http://127.0.0.1:${port}`;
    const post = (path, body, headers = {}) => fetch(`${base}${path}`, {
      method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...headers },
    });
    for (let i = 0; i < 700; i += 1) {
      assert.equal((await post('/assessments', { assessmentId: `k-${i}`, request: { i } }, { 'x-actor': `user-${i % 3}` })).status, 201);
    }
    assert.equal((await post('/assessments/k-1/start', {}, { 'x-actor': 'ops' })).status, 200);
    assert.equal((await post('/assessments/k-1/start', {}, { 'x-actor': 'ops' })).status, 409);
    assert.equal((await post('/assessments/k-2/cancel', {})).status, 200);
    assert.equal((await post('/assessments/k-3/start', {}, { 'x-actor': 'x'.repeat(201) })).status, 400);
    assert.equal((await post('/assessments', { assessmentId: 'other-1' })).status, 201);

    const lines = (await (await fetch(`${base}/export/audit?idPrefix=k-`)).text()).trim().split('\n').map((l) => JSON.parse(l));
    assert.equal(lines.length, 702);
    assert.deepEqual(Object.keys(lines[0]).sort(),
      ['actor', 'assessmentId', 'at', 'auditId', 'operation', 'seq', 'statusAfter', 'statusBefore']);
    assert.deepEqual([lines[0].actor, lines[4].actor, lines[700].actor, lines[701].actor], ['user-0', 'user-1', 'ops', DEFAULT_ACTOR]);
    assert.deepEqual([lines[700].operation, lines[700].assessmentId, lines[700].statusBefore, lines[700].statusAfter],
      ['start', 'k-1', 'pending', 'processing']);
    assert.ok(lines.every((e, i) => i === 0 || e.seq > lines[i - 1].seq));
    assert.ok(lines.every((e) => !Number.isNaN(Date.parse(e.at))));
    const all = (await (await fetch(`${base}/export/audit`)).text()).trim().split('\n');
    assert.equal(all.length, 703);

    const counts = await (await fetch(`${base}/export/counts?idPrefix=k-`)).json();
    assert.deepEqual(counts, { total: 700, byStatus: { pending: 698, processing: 1, cancelled: 1 } });
  });
});
