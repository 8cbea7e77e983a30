'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { randomUUID } = require('node:crypto');
const { LegacyAssessmentService, tap } = require('..');
const h = require('./helpers');

/** @type {string[]} */
const topics = [];

after(async () => {
  await h.deleteTopics(topics).catch((err) => console.error('could not delete test topics:', err));
  await h.closeAdmin();
});

const EXPORT_FIELDS = [
  'assessmentId',
  'status',
  'progress',
  'message',
  'request',
  'result',
  'error',
  'timestamp',
  'updatedAt',
  'duration',
];

test('the sample service walks the legacy lifecycle and emits the legacy events', () => {
  const service = new LegacyAssessmentService();
  /** @type {Array<[string, any]>} */
  const seen = [];
  for (const e of ['created', 'started', 'progress', 'completed', 'failed', 'cancelled']) {
    service.on(`assessment.${e}`, (data) => seen.push([e, data]));
  }
  const a = service.createAssessment({ subject: 'alice' });
  service.startAssessment(a);
  service.updateProgress(a, 40, 'scoring');
  service.completeAssessment(a, { score: 712 });
  const b = service.createAssessment({ subject: 'bob' });
  service.failAssessment(b, new Error('no data'));
  const c = service.createAssessment({ subject: 'carol' });
  service.startAssessment(c);
  service.cancelAssessment(c);

  assert.deepEqual(
    seen.map(([e]) => e),
    ['created', 'started', 'progress', 'completed', 'created', 'failed', 'created', 'started', 'cancelled'],
  );
  const [, created] = seen[0];
  assert.deepEqual(Object.keys(created).sort(), ['assessmentId', 'progress', 'request', 'status', 'timestamp']);
  assert.equal(created.status, 'pending');
  assert.equal(created.progress, 0);
  assert.deepEqual(created.request, { subject: 'alice' });
  assert.equal(seen[1][1].status, 'processing');
  assert.deepEqual([seen[2][1].progress, seen[2][1].message], [40, 'scoring']);
  const completed = seen[3][1];
  assert.equal(completed.status, 'completed');
  assert.deepEqual(completed.result, { score: 712 });
  assert.ok(Number.isInteger(completed.duration) && completed.duration >= 0);
  assert.equal(seen[5][1].status, 'failed');
  assert.equal(seen[5][1].error, 'no data');
  assert.equal(seen[8][1].status, 'cancelled');
  for (const [, data] of seen) assert.equal(new Date(data.timestamp).toISOString(), data.timestamp);

  assert.equal(service.getAssessment(a)?.status, 'completed');
  assert.equal(service.getAssessment('nope'), null);
  assert.deepEqual(
    service.getAllAssessments().map((r) => [r.assessmentId, r.status]),
    [
      [a, 'completed'],
      [b, 'failed'],
      [c, 'cancelled'],
    ],
  );
  const snapshot = service.exportSnapshot();
  for (const record of snapshot) assert.deepEqual(Object.keys(record), EXPORT_FIELDS);
  assert.deepEqual(snapshot[0], {
    assessmentId: a,
    status: 'completed',
    progress: 100,
    message: 'scoring',
    request: { subject: 'alice' },
    result: { score: 712 },
    error: null,
    timestamp: created.timestamp,
    updatedAt: completed.timestamp,
    duration: completed.duration,
  });
  /** @type {any} */ (snapshot[0]).status = 'tampered';
  assert.equal(service.getAssessment(a)?.status, 'completed', 'the export is a copy');
});

test('the sample service refuses illegal transitions with clear errors', () => {
  const service = new LegacyAssessmentService();
  const id = service.createAssessment({});
  assert.throws(() => service.completeAssessment(id, {}), /cannot complete assessment .* in status 'pending' \(allowed from processing\)/);
  assert.throws(() => service.startAssessment('missing'), /cannot start assessment missing: not found/);
  assert.throws(() => service.updateProgress(id, 101), RangeError);
  service.cancelAssessment(id);
  assert.throws(() => service.startAssessment(id), /in status 'cancelled' \(it is already final\)/);
});

test('reverse-synced store changes apply to a record created here, but never re-open a finished one', () => {
  const service = new LegacyAssessmentService();
  const emitted = [];
  service.on('assessment.completed', (d) => emitted.push(d));
  const id = service.createAssessment({ subject: 'dora' });
  service.startAssessment(id);
  const msg = (event, seq, data) => ({
    event: `assessment.${event}`, data: { assessmentId: id, timestamp: '2024-05-01T12:00:00.000Z', ...data },
    seq, emitter: 'assessment-store-reverse', reverseId: `${id}:${seq}`,
  });
  // Created and started here (store versions 1 and 2 came from the bridge); the store completed it.
  assert.equal(service.importReverseMessage(msg('completed', 3, { status: 'completed', result: { ok: 1 }, duration: 9 })), 'applied');
  assert.deepEqual([service.getAssessment(id).status, service.getAssessment(id).result, service.importedVersion(id)],
    ['completed', { ok: 1 }, 3]);
  assert.equal(service.importReverseMessage(msg('completed', 3, { status: 'completed' })), 'duplicate');
  assert.equal(emitted.length, 0, 'an imported change was emitted as a legacy event');
  // A later store message that would move the finished record elsewhere is refused and counted.
  assert.equal(service.importReverseMessage(msg('started', 4, { status: 'processing' })), 'conflict');
  assert.equal(service.getAssessment(id).status, 'completed');
});

test('end to end: the sample service with the tap; every assessment has its events in the topic', async () => {
  const topic = await h.createTopic('service');
  topics.push(topic);
  const service = new LegacyAssessmentService();
  const emitterId = `service-${randomUUID()}`;
  const t = tap(service, { topic, brokers: h.BROKERS, emitterId, logLevel: 'error' });
  /** @type {Map<string, string>} */
  const expectedEnd = new Map();
  const ids = [];
  for (let i = 0; i < 15; i += 1) ids.push(service.createAssessment({ subject: `s-${i}` }));
  for (const [i, id] of ids.entries()) {
    if (i === 14) {
      service.cancelAssessment(id); // cancelled while pending
      expectedEnd.set(id, 'cancelled');
      continue;
    }
    service.startAssessment(id);
    service.updateProgress(id, 50, 'half way');
    if (i % 4 === 0) {
      service.failAssessment(id, 'scoring engine down');
      expectedEnd.set(id, 'failed');
    } else {
      service.completeAssessment(id, { score: i });
      expectedEnd.set(id, 'completed');
    }
  }
  const stats = await t.close({ timeoutMs: 20000 });
  const total = 14 * 4 + 2;
  assert.equal(stats.forwarded, total);
  assert.equal(stats.dropped + stats.oversized + stats.unserializable, 0);

  const records = await h.consume(topic, total);
  assert.deepEqual(
    records.map((r) => r.value.seq).sort((x, y) => x - y),
    Array.from({ length: total }, (_, i) => i + 1),
  );
  const snapshot = new Map(service.exportSnapshot().map((r) => [r.assessmentId, r]));
  for (const id of ids) {
    const mine = records.filter((r) => r.key === id);
    const end = /** @type {string} */ (expectedEnd.get(id));
    const expected =
      end === 'cancelled'
        ? ['assessment.created', 'assessment.cancelled']
        : ['assessment.created', 'assessment.started', 'assessment.progress', `assessment.${end}`];
    assert.deepEqual(
      mine.map((r) => r.value.event),
      expected,
      `events of ${id}`,
    );
    for (const r of mine) {
      assert.equal(r.value.emitter, emitterId);
      assert.equal(r.value.data.assessmentId, id);
    }
    const last = mine[mine.length - 1].value.data;
    const record = /** @type {any} */ (snapshot.get(id));
    assert.equal(last.status, record.status);
    assert.equal(last.timestamp, record.updatedAt);
    assert.equal(mine[0].value.data.timestamp, record.timestamp);
    assert.deepEqual(mine[0].value.data.request, record.request);
    if (end === 'completed') assert.deepEqual(last.result, record.result);
    if (end === 'failed') assert.equal(last.error, 'scoring engine down');
  }
});

test('the bin script runs assessments through the tap, prints a summary line and exits 0', async () => {
  const topic = await h.createTopic('bin', { partitions: 2 });
  topics.push(topic);
  const script = path.join(__dirname, '..', 'bin', 'legacy-service.js');
  const args = [script, '--count', '8', '--fail-every', '3', '--concurrency', '3', '--brokers', h.BOOTSTRAP, '--topic', topic, '--no-create-topic'];
  const { code, stdout, stderr } = await new Promise((resolve) => {
    execFile(process.execPath, args, { timeout: 30000 }, (err, out, errOut) => {
      resolve({ code: err ? (/** @type {any} */ (err).code ?? 1) : 0, stdout: out, stderr: errOut });
    });
  });
  assert.equal(code, 0, `exit ${code}; stderr: ${stderr}`);
  const lines = stdout.trim().split('\n');
  assert.equal(lines.length, 1, stdout);
  const summary = JSON.parse(lines[0]);
  assert.equal(summary.assessments, 8);
  assert.equal(summary.completed, 6);
  assert.equal(summary.failed, 2);
  assert.equal(summary.topic, topic);
  const perAssessment = 2 + 3 + 1; // created, started, 3 x progress, terminal
  assert.equal(summary.tap.forwarded, 8 * perAssessment);
  assert.equal(summary.tap.dropped, 0);
  assert.equal(summary.tap.buffered, 0);
  const records = await h.consume(topic, 8 * perAssessment);
  const failed = new Set(records.filter((r) => r.value.event === 'assessment.failed').map((r) => r.key));
  assert.equal(failed.size, 2);

  const bad = await new Promise((resolve) => {
    execFile(process.execPath, [script, '--count', 'many'], { timeout: 10000 }, (err, _out, errOut) => {
      resolve({ code: /** @type {any} */ (err)?.code, stderr: errOut });
    });
  });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /--count must be an integer >= 0/);
});
