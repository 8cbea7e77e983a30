'use strict';

// The HTTP face of the sample legacy service (src/http.js, bin/legacy-http.js) against the real broker:
// the endpoints and their errors, the tap's messages, and the import of reverse-synced records.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { randomUUID } = require('node:crypto');
const { Kafka, logLevel } = require('kafkajs');
const { startLegacyHttp } = require('../src/http');
const h = require('./helpers');

/** @type {string[]} */
const topics = [];

after(async () => {
  await h.deleteTopics(topics).catch((err) => console.error('could not delete test topics:', err));
  await h.closeAdmin();
});

/**
 * @param {number} port
 * @param {string} method
 * @param {string} url
 * @param {unknown} [body]
 * @returns {Promise<{status: number, body: any}>}
 */
async function call(port, method, url, body) {
  const res = await fetch(`http://127.0.0.1:${port}${url}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

/** @param {string} prefix */
async function topicPair(prefix) {
  const topic = await h.createTopic(prefix);
  const reverseTopic = await h.createTopic(`${prefix}-reverse`);
  topics.push(topic, reverseTopic);
  return { topic, reverseTopic };
}

test('the HTTP face drives the lifecycle, answers typed errors, and its emissions reach the tap topic', async () => {
  const { topic, reverseTopic } = await topicPair('http');
  const running = await startLegacyHttp({
    brokers: h.BROKERS, topic, reverseTopic, groupId: `http-test-${randomUUID()}`, createTopics: false, logLevel: 'nothing',
  });
  try {
    const p = running.port;
    const created = await call(p, 'POST', '/assessments', { request: { subject: 'alice' }, assessmentId: 'a-1' });
    assert.deepEqual(created, { status: 201, body: { assessmentId: 'a-1' } });
    const generated = await call(p, 'POST', '/assessments', { request: { subject: 'bob' } });
    assert.equal(generated.status, 201);
    assert.match(generated.body.assessmentId, /^[0-9a-f-]{36}$/);

    const waiting = call(p, 'GET', '/assessments/a-1/wait?timeout=10000');
    assert.equal((await call(p, 'POST', '/assessments/a-1/start')).body.status, 'processing');
    const progress = await call(p, 'POST', '/assessments/a-1/progress', { progress: 40, message: 'scoring' });
    assert.deepEqual([progress.body.progress, progress.body.message, progress.body.version], [40, 'scoring', 3]);
    const done = await call(p, 'POST', '/assessments/a-1/complete', { result: { score: 7 }, durationMs: 5 });
    assert.deepEqual([done.status, done.body.status, done.body.result, done.body.version], [200, 'completed', { score: 7 }, 4]);
    const waited = await waiting;
    assert.deepEqual([waited.status, waited.body.status, waited.body.assessmentId], [200, 'completed', 'a-1']);

    // Errors, typed and naming the assessment.
    assert.deepEqual(await call(p, 'POST', '/assessments/a-1/start'), {
      status: 409,
      body: {
        error: 'InvalidTransition', assessmentId: 'a-1', status: 'completed', action: 'start',
        message: "cannot start assessment a-1 in status 'completed' (it is already final)",
      },
    });
    assert.deepEqual((await call(p, 'POST', '/assessments', { assessmentId: 'a-1' })).body,
      { error: 'InvalidTransition', assessmentId: 'a-1', status: 'completed', action: 'create' });
    assert.deepEqual(await call(p, 'GET', '/assessments/nope'), { status: 404, body: { error: 'AssessmentNotFound', assessmentId: 'nope' } });
    assert.equal((await call(p, 'POST', '/assessments/nope/start')).status, 404);
    const b = generated.body.assessmentId;
    assert.equal((await call(p, 'POST', `/assessments/${b}/progress`, { progress: 101 })).status, 400);
    assert.equal((await call(p, 'POST', `/assessments/${b}/progress`, { progress: 'x' })).body.field, 'progress');
    const timedOut = await call(p, 'GET', `/assessments/${b}/wait?timeout=50`);
    assert.deepEqual([timedOut.status, timedOut.body.error, timedOut.body.record.status], [408, 'WaitTimeout', 'pending']);
    assert.equal((await call(p, 'POST', `/assessments/${b}/fail`, { error: 'boom' })).body.error, 'boom');
    const c = (await call(p, 'POST', '/assessments', { request: null })).body.assessmentId;
    assert.equal((await call(p, 'POST', `/assessments/${c}/cancel`)).body.status, 'cancelled');
    assert.equal((await call(p, 'GET', '/elsewhere')).status, 404);
    assert.equal((await call(p, 'DELETE', '/assessments/a-1')).status, 405);

    const health = await call(p, 'GET', '/health');
    assert.equal(health.body.ok, true);
    await running.tap.flush({ timeoutMs: 10000 });
  } finally {
    await running.close();
  }
  // 4 (a-1) + 2 (b: created, failed) + 2 (c: created, cancelled) lifecycle emissions, in order per id.
  const got = await h.consume(topic, 8);
  const a1 = got.filter((m) => m.key === 'a-1').map((m) => m.value.event);
  assert.deepEqual(a1, ['assessment.created', 'assessment.started', 'assessment.progress', 'assessment.completed']);
  assert.ok(got.every((m) => m.value.emitter === running.emitterId));
});

test('reverse-synced records are imported once, wake waiters, and are never re-emitted through the tap', async () => {
  const { topic, reverseTopic } = await topicPair('http-rev');
  const running = await startLegacyHttp({
    brokers: h.BROKERS, topic, reverseTopic, groupId: `http-rev-${randomUUID()}`, createTopics: false, logLevel: 'nothing',
  });
  const kafka = new Kafka({ clientId: 'http-test-producer', brokers: h.BROKERS, logLevel: logLevel.NOTHING });
  const producer = kafka.producer();
  await producer.connect();
  try {
    const p = running.port;
    const id = `store-${randomUUID()}`;
    const ts = '2024-05-01T12:00:00.000Z';
    /** @param {string} event @param {number} seq @param {object} data */
    const msg = (event, seq, data) => ({
      key: id,
      value: JSON.stringify({
        event: `assessment.${event}`, data: { assessmentId: id, timestamp: ts, ...data }, emittedAt: ts, seq,
        emitter: 'assessment-store-reverse', reverseId: `${id}:${seq}`,
      }),
    });
    const created = msg('created', 1, { status: 'pending', progress: 0, request: { subject: 'carol' } });
    const started = msg('started', 2, { status: 'processing' });
    const progressed = msg('progress', 3, { progress: 60, message: 'scoring' });
    const completed = msg('completed', 4, { status: 'completed', progress: 100, result: { score: 3 }, duration: 1234 });
    await producer.send({ topic: reverseTopic, messages: [created, started, created, progressed] });
    const rec = await h.withTimeout((async () => {
      for (;;) {
        const r = await call(p, 'GET', `/assessments/${id}`);
        if (r.status === 200 && r.body.version === 3) return r.body;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })(), 20000, () => `record ${id} at version 3`);
    assert.deepEqual([rec.status, rec.progress, rec.message, rec.request], ['processing', 60, 'scoring', { subject: 'carol' }]);

    const waiting = call(p, 'GET', `/assessments/${id}/wait?timeout=20000`);
    // A re-read of the topic sends everything again: nothing changes twice.
    await producer.send({ topic: reverseTopic, messages: [completed, started, completed] });
    const done = await waiting;
    assert.deepEqual([done.status, done.body.status, done.body.result, done.body.duration, done.body.version],
      [200, 'completed', { score: 3 }, 1234, 4]);
    await h.waitFor(() => running.reverseStats().messages === 7, { what: 'all reverse messages consumed' });
    assert.deepEqual(running.reverseStats(), { messages: 7, applied: 4, duplicate: 3, conflict: 0, invalid: 0 });
    // The legacy side's own transitions then apply to an imported record as to any other.
    assert.equal((await call(p, 'POST', `/assessments/${id}/start`)).status, 409);
    assert.equal(running.tap.stats().emitted, 0, 'an imported record was emitted through the tap');
  } finally {
    await producer.disconnect();
    await running.close();
  }
  assert.equal(await h.topicSize(topic), 0);
});

test('bin/legacy-http.js prints {"listening": port} first and stops cleanly on SIGTERM', async () => {
  const { topic, reverseTopic } = await topicPair('http-bin');
  const child = spawn(process.execPath, [
    path.join(__dirname, '..', 'bin', 'legacy-http.js'), '--port', '0', '--brokers', h.BOOTSTRAP, '--topic', topic,
    '--reverse-topic', reverseTopic, '--group', `http-bin-${randomUUID()}`, '--no-create-topic', '--log-level', 'nothing',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    await h.withTimeout((async () => {
      while (!out.includes('\n')) await new Promise((resolve) => setTimeout(resolve, 20));
    })(), 20000, () => `first line (stderr: ${err})`);
    const first = JSON.parse(out.split('\n')[0]);
    assert.deepEqual(Object.keys(first), ['listening']);
    assert.ok(first.listening > 0);
    const created = await call(first.listening, 'POST', '/assessments', { request: { n: 1 } });
    assert.equal(created.status, 201);
    child.kill('SIGTERM');
    assert.equal(await h.withTimeout(exited, 20000, () => 'exit after SIGTERM'), 0);
    const summary = JSON.parse(out.trim().split('\n').at(-1) || '{}');
    assert.deepEqual([summary.stopped, summary.tap.forwarded, summary.tap.buffered], [true, 1, 0]);
  } finally {
    if (child.exitCode === null) child.kill('SIGKILL');
  }
  assert.equal(await h.topicSize(topic), 1);
});
