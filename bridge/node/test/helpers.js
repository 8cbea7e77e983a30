'use strict';

// Helpers for the tests that talk to a real Kafka broker (KAFKA_BOOTSTRAP, default 127.0.0.1:19092).

const { randomUUID } = require('node:crypto');
const { Kafka, logLevel } = require('kafkajs');
const { parseBrokers, DEFAULT_BROKERS } = require('../src/options');

const BOOTSTRAP = process.env.KAFKA_BOOTSTRAP || DEFAULT_BROKERS;
const BROKERS = parseBrokers(BOOTSTRAP);

const kafka = new Kafka({
  clientId: 'legacy-tap-tests',
  brokers: BROKERS,
  logLevel: logLevel.NOTHING,
  connectionTimeout: 3000,
  retry: { retries: 3, initialRetryTime: 100, maxRetryTime: 1000 },
});

/** @type {import('kafkajs').Admin|null} */
let admin = null;

async function getAdmin() {
  if (admin === null) {
    const a = kafka.admin();
    try {
      await a.connect();
    } catch (err) {
      throw new Error(
        `no Kafka broker answers at ${BOOTSTRAP} (${err instanceof Error ? err.message : err}); ` +
          'start one (see README.md, "Tests") and set KAFKA_BOOTSTRAP',
      );
    }
    admin = a;
  }
  return admin;
}

/**
 * A new topic with a unique name, so test runs never see each other's messages.
 * @param {string} prefix
 * @param {{partitions?: number, config?: Record<string, string>}} [options]
 * @returns {Promise<string>}
 */
async function createTopic(prefix, { partitions = 3, config = {} } = {}) {
  const topic = `legacy-tap-test.${prefix}.${randomUUID()}`;
  const a = await getAdmin();
  const created = await a.createTopics({
    topics: [
      {
        topic,
        numPartitions: partitions,
        configEntries: Object.entries(config).map(([name, value]) => ({ name, value })),
      },
    ],
    waitForLeaders: true,
  });
  if (!created) throw new Error(`topic ${topic} already existed`);
  return topic;
}

/** @param {string[]} topics */
async function deleteTopics(topics) {
  if (topics.length === 0) return;
  const a = await getAdmin();
  await a.deleteTopics({ topics, timeout: 10000 });
}

/**
 * Total number of records in a topic (sum of the partitions' high watermarks; the topics are new).
 * @param {string} topic
 */
async function topicSize(topic) {
  const offsets = await (await getAdmin()).fetchTopicOffsets(topic);
  return offsets.reduce((sum, p) => sum + Number(p.high) - Number(p.low), 0);
}

/**
 * @typedef {object} Consumed
 * @property {number} partition
 * @property {string} offset
 * @property {string|null} key
 * @property {any} value parsed JSON
 * @property {number} bytes
 */

/**
 * Reads exactly `expected` records from a topic (from the beginning, with a fresh consumer group)
 * and checks that the topic holds no more than that.
 * @param {string} topic
 * @param {number} expected
 * @param {{timeoutMs?: number}} [options]
 * @returns {Promise<Consumed[]>} in consumption order (ordered within each partition)
 */
async function consume(topic, expected, { timeoutMs = 20000 } = {}) {
  const consumer = kafka.consumer({ groupId: `legacy-tap-test-${randomUUID()}`, maxWaitTimeInMs: 100 });
  await consumer.connect();
  /** @type {Consumed[]} */
  const got = [];
  try {
    await consumer.subscribe({ topics: [topic], fromBeginning: true });
    /** @type {() => void} */
    let done = () => {};
    const finished = new Promise((resolve) => {
      done = () => resolve(undefined);
    });
    if (expected === 0) done();
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const text = message.value ? message.value.toString('utf8') : '';
        got.push({
          partition,
          offset: message.offset,
          key: message.key ? message.key.toString('utf8') : null,
          value: JSON.parse(text),
          bytes: message.value ? message.value.length : 0,
        });
        if (got.length >= expected) done();
      },
    });
    await withTimeout(finished, timeoutMs, () => `consumed ${got.length} of ${expected} records from ${topic}`);
  } finally {
    await consumer.disconnect();
  }
  const size = await topicSize(topic);
  if (size !== expected) throw new Error(`topic ${topic} holds ${size} records, expected ${expected}`);
  return got;
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {() => string} what
 * @returns {Promise<T>}
 */
async function withTimeout(promise, ms, what) {
  /** @type {NodeJS.Timeout|undefined} */
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what()}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls a condition until it holds (bounded).
 * @param {() => boolean} condition
 * @param {{timeoutMs?: number, what?: string}} [options]
 */
async function waitFor(condition, { timeoutMs = 10000, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/**
 * Resolves with the arguments of the next `event` of `emitter` (bounded).
 * @param {import('node:events').EventEmitter} emitter
 * @param {string} event
 * @param {number} [timeoutMs]
 */
function nextEvent(emitter, event, timeoutMs = 10000) {
  return withTimeout(
    new Promise((resolve) => emitter.once(event, (...args) => resolve(args))),
    timeoutMs,
    () => `no '${event}' event`,
  );
}

async function closeAdmin() {
  if (admin !== null) {
    const a = admin;
    admin = null;
    await a.disconnect();
  }
}

module.exports = {
  BOOTSTRAP,
  BROKERS,
  createTopic,
  deleteTopics,
  topicSize,
  consume,
  withTimeout,
  waitFor,
  nextEvent,
  closeAdmin,
};
