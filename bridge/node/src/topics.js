'use strict';

const { Kafka } = require('kafkajs');
const { parseBrokers, parseLogLevel, securityFromEnv, DEFAULT_BROKERS } = require('./options');

/**
 * Creates a topic if it does not exist, with the settings the Python side gives the legacy topic
 * (retention forever). The broker of the local stack has auto.create.topics.enable=false and the
 * tap never creates topics itself, so something must create it first: the Python bridge, an
 * operator, or this helper.
 *
 * @param {object} params
 * @param {string} params.topic
 * @param {string|string[]} [params.brokers] default env KAFKA_BOOTSTRAP, else '127.0.0.1:19092'
 * @param {number} [params.partitions] default 6 (the project's default)
 * @param {Record<string, string>} [params.config] topic configs; default retention.ms/bytes = -1
 * @param {'nothing'|'error'|'warn'|'info'|'debug'|number} [params.logLevel] default 'error'
 * @param {object} [params.kafka] extra kafkajs client config
 * @returns {Promise<boolean>} true when this call created it, false when it already existed
 */
async function ensureTopic({ topic, brokers, partitions = 6, config, logLevel = 'error', kafka = {} }) {
  const client = new Kafka({
    ...securityFromEnv(),
    ...kafka,
    logLevel: parseLogLevel(logLevel),
    clientId: 'assessment-legacy-tap-admin',
    brokers: parseBrokers(brokers === undefined ? process.env.KAFKA_BOOTSTRAP || DEFAULT_BROKERS : brokers),
  });
  const admin = client.admin();
  await admin.connect();
  try {
    if ((await admin.listTopics()).includes(topic)) return false;
    const configEntries = Object.entries(config || { 'retention.ms': '-1', 'retention.bytes': '-1' }).map(
      ([name, value]) => ({ name, value }),
    );
    return await admin.createTopics({
      topics: [{ topic, numPartitions: partitions, configEntries }],
      waitForLeaders: true,
    });
  } finally {
    await admin.disconnect();
  }
}

module.exports = { ensureTopic };
