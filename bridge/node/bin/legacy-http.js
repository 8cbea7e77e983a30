#!/usr/bin/env node
'use strict';

// The sample legacy service behind HTTP (see src/http.js): tap attached, reverse sync imported.
// First stdout line: {"listening": port}. SIGTERM/SIGINT: stop, deliver what the tap buffered, print
// one JSON summary line and exit 0 (1 if the tap could not deliver everything).

const { parseArgs } = require('node:util');
const { startLegacyHttp } = require('../src/http');
const { DEFAULTS } = require('../src/options');

const USAGE = `usage: legacy-http [options]
  --port N             port on 127.0.0.1 (default env LEGACY_HTTP_PORT, else 0 = pick a free one)
  --brokers LIST       Kafka bootstrap servers (default env KAFKA_BOOTSTRAP, else 127.0.0.1:19092)
  --topic NAME         the tap's topic (default ${DEFAULTS.topic})
  --reverse-topic NAME the reverse-sync topic to import (default <topic>.reverse)
  --no-reverse         do not consume the reverse-sync topic
  --group ID           the reverse consumer's group (default assessment-legacy-reverse-import)
  --emitter-id ID      the tap's emitter id (default legacy-http-<host>-<pid>-<start ms>)
  --partitions P       partitions of topics it creates (default 6)
  --no-create-topic    do not create missing topics
  --log-level LEVEL    nothing|error|warn|info|debug (default warn)
  -h, --help`;

function parse() {
  const { values, positionals } = parseArgs({
    options: {
      port: { type: 'string' },
      brokers: { type: 'string' },
      topic: { type: 'string' },
      'reverse-topic': { type: 'string' },
      'no-reverse': { type: 'boolean' },
      group: { type: 'string' },
      'emitter-id': { type: 'string' },
      partitions: { type: 'string' },
      'no-create-topic': { type: 'boolean' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: true,
  });
  const rawPort = values.port ?? positionals[0] ?? process.env.LEGACY_HTTP_PORT ?? '0';
  const port = Number(rawPort);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`--port must be in [0, 65535], got ${rawPort}`);
  const partitions = Number(values.partitions ?? '6');
  if (!Number.isInteger(partitions) || partitions < 1) throw new RangeError(`--partitions must be >= 1`);
  const topic = values.topic || DEFAULTS.topic;
  return {
    help: Boolean(values.help),
    port,
    partitions,
    topic,
    reverseTopic: values['no-reverse'] ? null : values['reverse-topic'] || `${topic}.reverse`,
    brokers: values.brokers,
    groupId: values.group,
    emitterId: values['emitter-id'],
    createTopics: !values['no-create-topic'],
    logLevel: values['log-level'] || 'warn',
  };
}

async function main() {
  let args;
  try {
    args = parse();
  } catch (err) {
    process.stderr.write(`legacy-http: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    process.exitCode = 2;
    return;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const { help, ...options } = args;
  const running = await startLegacyHttp({
    ...options,
    ...(options.brokers === undefined ? { brokers: undefined } : {}),
  });
  process.stdout.write(`${JSON.stringify({ listening: running.port })}\n`);
  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    let code = 0;
    /** @type {unknown} */
    let tapStats = null;
    try {
      tapStats = await running.close();
    } catch (err) {
      code = 1;
      process.stderr.write(`legacy-http: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}\n`);
      tapStats = running.tap.stats();
    }
    process.stdout.write(`${JSON.stringify({ stopped: true, emitter: running.emitterId, tap: tapStats, reverse: running.reverseStats() })}\n`);
    process.exit(code);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  process.stderr.write(`legacy-http: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}\n`);
  process.exit(1);
});
