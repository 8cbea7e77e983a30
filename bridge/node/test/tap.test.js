'use strict';

// The tap against a real Kafka broker (KAFKA_BOOTSTRAP, default 127.0.0.1:19092).

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const { EventEmitter } = require('node:events');
const { randomUUID } = require('node:crypto');
const { tap, LEGACY_EVENTS, TapCloseError, TapFlushTimeoutError } = require('..');
const h = require('./helpers');

/** @type {string[]} */
const topics = [];
/** @type {Array<{close: (o?: object) => Promise<unknown>}>} */
const taps = [];

after(async () => {
  await Promise.allSettled(taps.map((t) => t.close({ timeoutMs: 1000 })));
  await h.deleteTopics(topics).catch((err) => console.error('could not delete test topics:', err));
  await h.closeAdmin();
});

/** @param {string} prefix @param {object} [options] */
async function newTopic(prefix, options) {
  const topic = await h.createTopic(prefix, options);
  topics.push(topic);
  return topic;
}

/** @param {EventEmitter} emitter @param {object} options */
function newTap(emitter, options) {
  const t = tap(emitter, { brokers: h.BROKERS, logLevel: 'error', ...options });
  taps.push(t);
  return t;
}

/** An unreachable broker with short retry settings. */
const UNREACHABLE = {
  brokers: '127.0.0.1:1',
  logLevel: 'nothing',
  retry: { initialRetryTime: 20, maxRetryTime: 100 },
  kafka: { connectionTimeout: 300, retry: { retries: 1, initialRetryTime: 20, maxRetryTime: 50 } },
};

test('every emission arrives in order, with consecutive seq numbers and the contract JSON shape', async () => {
  const topic = await newTopic('order');
  const emitter = new EventEmitter();
  const emitterId = `test-${randomUUID()}`;
  const t = newTap(emitter, { topic, emitterId });
  /** @type {Array<{event: string, data: any}>} */
  const sent = [];
  const ids = Array.from({ length: 20 }, (_, i) => `a-${i}-${randomUUID()}`);
  /** @param {string} event @param {any} data */
  const emit = (event, data) => {
    emitter.emit(event, data);
    sent.push({ event, data });
  };
  // Interleaved lifecycles, in several ticks so that several batches go out.
  for (const id of ids) emit('assessment.created', { assessmentId: id, status: 'pending', progress: 0, request: { n: id } });
  await new Promise((resolve) => setImmediate(resolve));
  for (const id of ids) emit('assessment.started', { assessmentId: id, status: 'processing' });
  for (let p = 10; p <= 90; p += 10) {
    for (const id of ids) emit('assessment.progress', { assessmentId: id, progress: p, message: `at ${p}` });
    if (p % 30 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  ids.forEach((id, i) => {
    if (i % 3 === 0) emit('assessment.failed', { assessmentId: id, status: 'failed', error: 'boom' });
    else if (i % 7 === 0) emit('assessment.cancelled', { assessmentId: id, status: 'cancelled' });
    else emit('assessment.completed', { assessmentId: id, status: 'completed', result: { score: i }, duration: i });
  });
  // Odd shapes are forwarded as they are; without a string assessmentId the key is null.
  emit('assessment.progress', { assessmentId: 42, progress: 'half' });
  emit('assessment.completed', undefined);
  emit('assessment.created', { note: 'no id', nested: { deep: [1, 2, { ü: '日本' }] } });
  // Events outside the six are not forwarded.
  emitter.emit('assessment.deleted', { assessmentId: ids[0] });
  emitter.emit('something.else', 1);
  emitter.on('error', () => {});
  emitter.emit('error', new Error('not forwarded'));

  await h.withTimeout(t.flush(), 20000, () => JSON.stringify(t.stats()));
  const n = sent.length;
  assert.deepEqual(
    { ...t.stats(), lastError: null },
    {
      emitted: n,
      forwarded: n,
      buffered: 0,
      inFlight: 0,
      dropped: 0,
      oversized: 0,
      unserializable: 0,
      failedAttempts: 0,
      callbackErrors: 0,
      lastError: null,
      connected: true,
      closed: false,
    },
  );

  const records = await h.consume(topic, n);
  const bySeq = [...records].sort((a, b) => a.value.seq - b.value.seq);
  assert.deepEqual(
    bySeq.map((r) => r.value.seq),
    Array.from({ length: n }, (_, i) => i + 1),
    'seq numbers are 1..n, each once',
  );
  bySeq.forEach((r, i) => {
    const { event, data } = sent[i];
    assert.deepEqual(Object.keys(r.value), ['event', 'data', 'emittedAt', 'seq', 'emitter']);
    assert.equal(r.value.event, event);
    assert.deepEqual(r.value.data, data === undefined ? null : data);
    assert.equal(r.value.emitter, emitterId);
    assert.equal(new Date(r.value.emittedAt).toISOString(), r.value.emittedAt, 'emittedAt is ISO-8601');
    assert.equal(r.key, data && typeof data.assessmentId === 'string' ? data.assessmentId : null);
    assert.ok(LEGACY_EVENTS.includes(r.value.event));
  });
  // Within a partition the records are in emission order; so each assessment's events are too.
  /** @type {Map<number, number>} */
  const lastSeqOfPartition = new Map();
  for (const r of records) {
    const last = lastSeqOfPartition.get(r.partition) ?? 0;
    assert.ok(r.value.seq > last, `partition ${r.partition}: seq ${r.value.seq} after ${last}`);
    lastSeqOfPartition.set(r.partition, r.value.seq);
  }
  assert.ok(lastSeqOfPartition.size > 1, 'the keys spread over several partitions');
  for (const id of ids) {
    const events = records.filter((r) => r.key === id);
    assert.equal(new Set(events.map((r) => r.partition)).size, 1, `${id} stays on one partition`);
    assert.deepEqual(
      events.map((r) => r.value.event).slice(0, 3),
      ['assessment.created', 'assessment.started', 'assessment.progress'],
    );
    assert.deepEqual(
      events.filter((r) => r.value.event === 'assessment.progress').map((r) => r.value.data.progress),
      [10, 20, 30, 40, 50, 60, 70, 80, 90],
    );
  }
  assert.deepEqual(await t.close(), { ...t.stats() });
});

test("emit() behaves exactly as without the tap: return value, listeners, this, thrown errors", async () => {
  const topic = await newTopic('emit');
  const emitter = new EventEmitter();
  assert.equal(Object.hasOwn(emitter, 'emit'), false);
  const t = newTap(emitter, { topic });
  assert.equal(Object.hasOwn(emitter, 'emit'), true, 'emit is wrapped on the instance');

  const data = { assessmentId: 'x-1', status: 'pending' };
  assert.equal(emitter.emit('assessment.created', data), false, 'false without listeners');
  /** @type {any[]} */
  const calls = [];
  emitter.on('assessment.started', /** @this {EventEmitter} */ function listener(...args) {
    calls.push({ self: this, args });
  });
  assert.equal(emitter.emit('assessment.started', data, 'extra', 3), true, 'true with listeners');
  assert.equal(calls.length, 1);
  assert.equal(calls[0].self, emitter);
  assert.equal(calls[0].args[0], data, 'the same object reaches the listener');
  assert.deepEqual(calls[0].args.slice(1), ['extra', 3]);

  const boom = new Error('listener failure');
  emitter.once('assessment.progress', () => {
    throw boom;
  });
  assert.throws(() => emitter.emit('assessment.progress', { assessmentId: 'x-1', progress: 5 }), (err) => err === boom);
  assert.equal(emitter.listenerCount('assessment.progress'), 0, 'once listeners still removed');

  // An 'error' emission without a listener throws as usual.
  const unhandled = new Error('unhandled');
  assert.throws(() => emitter.emit('error', unhandled), (err) => err === unhandled);
  const sym = Symbol('s');
  let symCalls = 0;
  emitter.on(sym, () => (symCalls += 1));
  assert.equal(emitter.emit(sym), true);
  assert.equal(symCalls, 1);

  // A listener that emits: the nested emission is captured after its parent.
  emitter.on('assessment.completed', (d) => emitter.emit('assessment.cancelled', { assessmentId: d.assessmentId }));
  emitter.emit('assessment.completed', { assessmentId: 'x-1' });

  assert.throws(() => tap(emitter, { topic }), /already tapped/);
  await t.close();
  assert.equal(Object.hasOwn(emitter, 'emit'), false, 'close() restores the prototype emit');
  assert.equal(emitter.emit, EventEmitter.prototype.emit);
  emitter.emit('assessment.failed', { assessmentId: 'x-1' }); // not captured any more

  const records = await h.consume(topic, 5);
  assert.deepEqual(
    records.map((r) => [r.value.seq, r.value.event]),
    [
      [1, 'assessment.created'],
      [2, 'assessment.started'],
      [3, 'assessment.progress'], // emitted even though its listener threw
      [4, 'assessment.completed'],
      [5, 'assessment.cancelled'],
    ],
  );

  // An emitter with its own emit property gets that one back; a later re-tap works.
  const custom = new EventEmitter();
  /** @this {EventEmitter} @param {any[]} args */
  const ownEmit = function ownEmit(...args) {
    return EventEmitter.prototype.emit.apply(this, /** @type {any} */ (args));
  };
  custom.emit = ownEmit;
  const t2 = newTap(custom, { topic });
  assert.notEqual(custom.emit, ownEmit);
  await t2.close();
  assert.equal(custom.emit, ownEmit);
  const t3 = newTap(custom, { topic });
  await t3.close();
});

test('buffer overflow while the broker is unreachable drops the oldest, counts them and emits dropped', async () => {
  const emitter = new EventEmitter();
  /** @type {any[]} */
  const onDropCalls = [];
  const t = newTap(emitter, { ...UNREACHABLE, maxBuffered: 10, onDrop: (/** @type {any} */ info) => onDropCalls.push(info) });
  const dropped = h.nextEvent(t, 'dropped');
  for (let i = 1; i <= 25; i += 1) {
    assert.equal(emitter.emit('assessment.progress', { assessmentId: `u-${i}`, progress: i }), false);
  }
  let s = t.stats();
  assert.equal(s.emitted, 25);
  assert.equal(s.buffered, 10);
  assert.equal(s.dropped, 15);
  assert.equal(s.forwarded, 0);
  const [info] = await dropped;
  assert.deepEqual(info, { reason: 'overflow', count: 15, firstSeq: 1, lastSeq: 15 });
  assert.deepEqual(onDropCalls, [info]);

  await h.waitFor(() => t.stats().failedAttempts >= 2, { what: 'two failed delivery attempts', timeoutMs: 15000 });
  s = t.stats();
  assert.match(String(s.lastError), /ECONNREFUSED|Connection error/);
  assert.equal(s.buffered, 10, 'failed attempts keep the buffer');
  assert.equal(s.dropped, 15);

  const more = h.nextEvent(t, 'dropped');
  for (let i = 26; i <= 30; i += 1) emitter.emit('assessment.progress', { assessmentId: `u-${i}`, progress: i });
  assert.deepEqual((await more)[0], { reason: 'overflow', count: 5, firstSeq: 16, lastSeq: 20 });
  assert.equal(t.stats().dropped, 20);

  await assert.rejects(t.flush({ timeoutMs: 50 }), TapFlushTimeoutError);
  assert.equal(t.stats().buffered, 10, 'a flush timeout keeps the messages');
  const closing = h.nextEvent(t, 'dropped');
  await assert.rejects(t.close({ timeoutMs: 50 }), (err) => {
    assert.ok(err instanceof TapCloseError);
    assert.equal(/** @type {any} */ (err).undelivered, 10);
    assert.match(err.message, /closed with 10 undelivered message\(s\)/);
    return true;
  });
  assert.deepEqual((await closing)[0], { reason: 'closed', count: 10, firstSeq: 21, lastSeq: 30 });
  s = t.stats();
  assert.equal(s.dropped, 30);
  assert.equal(s.buffered, 0);
  assert.equal(s.closed, true);
});

test('overflow with a live broker: the oldest are dropped and the newest delivered', async () => {
  const topic = await newTopic('overflow');
  const emitter = new EventEmitter();
  const t = newTap(emitter, { topic, maxBuffered: 10 });
  const dropped = h.nextEvent(t, 'dropped');
  // One synchronous burst: nothing is sent before the tick ends, so 25 meet a 10-message buffer.
  for (let i = 1; i <= 25; i += 1) emitter.emit('assessment.progress', { assessmentId: 'burst', progress: i });
  assert.deepEqual((await dropped)[0], { reason: 'overflow', count: 15, firstSeq: 1, lastSeq: 15 });
  await t.close({ timeoutMs: 20000 });
  assert.equal(t.stats().forwarded, 10);
  const records = await h.consume(topic, 10);
  assert.deepEqual(
    records.map((r) => r.value.seq),
    [16, 17, 18, 19, 20, 21, 22, 23, 24, 25],
  );
});

test('an oversized payload is not sent, is counted and reported; the others go through', async () => {
  const topic = await newTopic('oversized');
  const emitter = new EventEmitter();
  const t = newTap(emitter, { topic });
  const dropped = h.nextEvent(t, 'dropped');
  emitter.emit('assessment.created', { assessmentId: 'big-1', status: 'pending' });
  emitter.emit('assessment.completed', { assessmentId: 'big-1', result: { blob: 'x'.repeat(1_000_000) } });
  emitter.emit('assessment.failed', { assessmentId: 'big-2', error: 'y' });
  const [info] = await dropped;
  assert.equal(info.reason, 'oversized');
  assert.equal(info.count, 1);
  assert.equal(info.firstSeq, 2);
  assert.equal(info.event, 'assessment.completed');
  assert.equal(info.assessmentId, 'big-1');
  assert.ok(info.bytes > 1_000_000);
  await t.close({ timeoutMs: 20000 });
  const s = t.stats();
  assert.equal(s.oversized, 1);
  assert.equal(s.forwarded, 2);
  assert.equal(s.dropped, 0);
  const records = await h.consume(topic, 2);
  assert.deepEqual(records.map((r) => r.value.seq).sort(), [1, 3], 'the gap at seq 2 shows the drop downstream');
});

test('a message the broker refuses as too large is counted as oversized and does not block the rest', async () => {
  const topic = await newTopic('refused', { partitions: 1, config: { 'max.message.bytes': '20000' } });
  const emitter = new EventEmitter();
  const t = newTap(emitter, { topic, logLevel: 'nothing' });
  /** @type {any[]} */
  const drops = [];
  t.on('dropped', (info) => drops.push(info));
  emitter.emit('assessment.created', { assessmentId: 'r-1' });
  emitter.emit('assessment.progress', { assessmentId: 'r-1', message: 'z'.repeat(50000) }); // < maxMessageBytes
  emitter.emit('assessment.completed', { assessmentId: 'r-1', result: { ok: true } });
  await t.close({ timeoutMs: 20000 });
  const s = t.stats();
  assert.equal(s.oversized, 1);
  assert.equal(s.forwarded, 2);
  assert.match(String(s.lastError), /MESSAGE_TOO_LARGE|RECORD_LIST_TOO_LARGE/);
  assert.equal(drops.length, 1);
  assert.equal(drops[0].reason, 'oversized');
  assert.equal(drops[0].firstSeq, 2);
  const records = await h.consume(topic, 2);
  assert.deepEqual(records.map((r) => r.value.seq), [1, 3]);
});

test('large messages go out in byte-bounded batches', async () => {
  const topic = await newTopic('batches', { partitions: 1 });
  const emitter = new EventEmitter();
  const t = newTap(emitter, { topic });
  const blob = 'b'.repeat(200_000);
  for (let i = 1; i <= 20; i += 1) emitter.emit('assessment.progress', { assessmentId: 'same-key', progress: i, blob });
  await t.close({ timeoutMs: 30000 });
  const s = t.stats();
  assert.equal(s.forwarded, 20, JSON.stringify(s));
  assert.equal(s.failedAttempts, 0, JSON.stringify(s));
  const records = await h.consume(topic, 20);
  assert.deepEqual(records.map((r) => r.value.seq), Array.from({ length: 20 }, (_, i) => i + 1));
});

test('unserializable data and throwing drop listeners are counted, and emit() is unaffected', async () => {
  const topic = await newTopic('unserializable');
  const emitter = new EventEmitter();
  /** @type {any[]} */
  const drops = [];
  const t = newTap(emitter, {
    topic,
    logLevel: 'nothing',
    onDrop: () => {
      throw new Error('bad onDrop');
    },
  });
  t.on('dropped', (info) => drops.push(info));
  t.on('dropped', () => {
    throw new Error('bad listener');
  });
  /** @type {any} */
  const circular = { assessmentId: 'c-1' };
  circular.self = circular;
  let seen = 0;
  emitter.on('assessment.progress', (d) => {
    seen += d === circular ? 1 : 0;
  });
  assert.equal(emitter.emit('assessment.progress', circular), true);
  assert.equal(emitter.emit('assessment.progress', { assessmentId: 'c-1', n: 10n }), true);
  emitter.emit('assessment.completed', { assessmentId: 'c-1' });
  assert.equal(seen, 1);
  await h.waitFor(() => drops.length === 2 && t.stats().callbackErrors === 4, { what: 'the drop notices' });
  assert.deepEqual(
    drops.map((d) => [d.reason, d.firstSeq, d.assessmentId]),
    [
      ['unserializable', 1, 'c-1'],
      ['unserializable', 2, 'c-1'],
    ],
  );
  assert.match(drops[0].error, /circular/i);
  assert.match(drops[1].error, /BigInt/);
  await t.close({ timeoutMs: 20000 });
  const s = t.stats();
  assert.equal(s.unserializable, 2);
  assert.equal(s.callbackErrors, 4);
  assert.equal(s.forwarded, 1);
  assert.match(String(s.lastError), /threw: Error: bad/);
  const records = await h.consume(topic, 1);
  assert.equal(records[0].value.seq, 3);
});

test('options are validated with clear errors', () => {
  const emitter = new EventEmitter();
  assert.throws(() => tap(/** @type {any} */ (null)), /emitter must be an object with an emit\(\) method/);
  assert.throws(() => tap(emitter, /** @type {any} */ ({ maxBuffer: 5 })), /unknown tap option\(s\): maxBuffer/);
  assert.throws(() => tap(emitter, { maxBuffered: 0 }), /maxBuffered must be an integer >= 1/);
  assert.throws(() => tap(emitter, { brokers: 'nohostport' }), /not "host:port"/);
  assert.throws(() => tap(emitter, /** @type {any} */ ({ logLevel: 'loud' })), /logLevel must be one of/);
  assert.equal(Object.hasOwn(emitter, 'emit'), false, 'a refused tap leaves the emitter alone');
});
