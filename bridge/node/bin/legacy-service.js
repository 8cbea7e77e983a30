#!/usr/bin/env node
'use strict';

/**
 * Runs the sample legacy service with the tap attached: N assessments through their lifecycle,
 * then flush/close, then one summary JSON line on stdout. Exit 0 when everything was delivered,
 * 1 when the tap could not deliver (or drop-free delivery failed), 2 on bad arguments.
 */

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { setImmediate: nextTurn } = require('node:timers/promises');
const { tap, LegacyAssessmentService, ensureTopic, DEFAULTS } = require('..');

const USAGE = `usage: legacy-service [options]
  --count N            assessments to run through their lifecycle (default 10)
  --fail-every K       every K-th assessment fails instead of completing (default 0: none)
  --cancel-every K     every K-th assessment is cancelled while processing (default 0: none)
  --progress-steps S   progress updates per assessment (default 3)
  --concurrency C      assessments in flight at once; the next wave starts once the tap has
                       delivered the previous one (default 100)
  --brokers LIST       host:port[,host:port] (default env KAFKA_BOOTSTRAP, else 127.0.0.1:19092)
  --topic NAME         (default ${DEFAULTS.topic})
  --emitter-id ID      the messages' "emitter" (default hostname-pid)
  --partitions P       partitions if the topic must be created (default 6)
  --no-create-topic    do not create the topic when it is missing
  --export FILE        also write the legacy JSON Lines export of the final state to FILE
  --timeout-ms MS      how long close() may take to deliver what is buffered (default 30000)
  --log-level LEVEL    nothing|error|warn|info|debug (default warn)
  -h, --help`;

/**
 * @param {Record<string, string|boolean|undefined>} values
 * @param {string} name
 * @param {number} dflt
 * @param {number} min
 */
function intArg(values, name, dflt, min) {
  const raw = values[name];
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new RangeError(`--${name} must be an integer >= ${min}, got ${String(raw)}`);
  return n;
}

function parse() {
  const { values } = parseArgs({
    options: {
      count: { type: 'string' },
      'fail-every': { type: 'string' },
      'cancel-every': { type: 'string' },
      'progress-steps': { type: 'string' },
      concurrency: { type: 'string' },
      brokers: { type: 'string' },
      topic: { type: 'string' },
      'emitter-id': { type: 'string' },
      partitions: { type: 'string' },
      'create-topic': { type: 'boolean', default: true },
      'no-create-topic': { type: 'boolean' },
      export: { type: 'string' },
      'timeout-ms': { type: 'string' },
      'log-level': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  });
  return {
    help: Boolean(values.help),
    count: intArg(values, 'count', 10, 0),
    failEvery: intArg(values, 'fail-every', 0, 0),
    cancelEvery: intArg(values, 'cancel-every', 0, 0),
    progressSteps: intArg(values, 'progress-steps', 3, 0),
    concurrency: intArg(values, 'concurrency', 100, 1),
    partitions: intArg(values, 'partitions', 6, 1),
    timeoutMs: intArg(values, 'timeout-ms', DEFAULTS.closeTimeoutMs, 0),
    brokers: values.brokers,
    topic: values.topic || DEFAULTS.topic,
    emitterId: values['emitter-id'],
    createTopic: values['create-topic'] !== false && !values['no-create-topic'],
    exportFile: values.export,
    logLevel: values['log-level'] || DEFAULTS.logLevel,
  };
}

/**
 * Assessments first..last through their lifecycle, interleaved, one step per event-loop turn.
 * @param {LegacyAssessmentService} service
 * @param {ReturnType<typeof parse>} args
 * @param {number} first
 * @param {number} last
 * @param {{completed: number, failed: number, cancelled: number}} outcome
 */
async function runWave(service, args, first, last, outcome) {
  /** @type {Array<[number, string]>} */
  const wave = [];
  for (let n = first; n <= last; n += 1) {
    wave.push([n, service.createAssessment({ subject: `subject-${n}`, kind: 'sample', n })]);
  }
  await nextTurn();
  for (const [, id] of wave) service.startAssessment(id);
  for (let step = 1; step <= args.progressSteps; step += 1) {
    await nextTurn();
    const progress = Math.round((step * 100) / (args.progressSteps + 1));
    for (const [, id] of wave) service.updateProgress(id, progress, `step ${step} of ${args.progressSteps}`);
  }
  await nextTurn();
  for (const [n, id] of wave) {
    if (args.cancelEvery > 0 && n % args.cancelEvery === 0) {
      service.cancelAssessment(id);
      outcome.cancelled += 1;
    } else if (args.failEvery > 0 && n % args.failEvery === 0) {
      service.failAssessment(id, new Error(`simulated failure of assessment ${n}`));
      outcome.failed += 1;
    } else {
      service.completeAssessment(id, { score: 500 + ((n * 37) % 300), passed: n % 4 !== 0 });
      outcome.completed += 1;
    }
  }
}

/**
 * @param {ReturnType<typeof parse>} args
 */
async function run(args) {
  const started = Date.now();
  if (args.createTopic) {
    await ensureTopic({
      topic: args.topic,
      brokers: args.brokers,
      partitions: args.partitions,
      logLevel: /** @type {any} */ (args.logLevel),
      kafka: { retry: { retries: 3, maxRetryTime: 2000 } },
    });
  }
  const service = new LegacyAssessmentService();
  const legacyTap = tap(service, {
    topic: args.topic,
    ...(args.brokers ? { brokers: args.brokers } : {}),
    ...(args.emitterId ? { emitterId: args.emitterId } : {}),
    logLevel: /** @type {any} */ (args.logLevel),
    closeTimeoutMs: args.timeoutMs,
  });
  const dropped = { overflow: 0, oversized: 0, unserializable: 0, closed: 0 };
  legacyTap.on('dropped', (info) => {
    dropped[/** @type {keyof typeof dropped} */ (info.reason)] += info.count;
  });

  const outcome = { completed: 0, failed: 0, cancelled: 0 };
  /** @type {unknown} */
  let runError = null;
  try {
    for (let first = 1; first <= args.count; first += args.concurrency) {
      const last = Math.min(args.count, first + args.concurrency - 1);
      await runWave(service, args, first, last, outcome);
      // Like a real service, don't outrun the tap: the next wave starts once this one is delivered.
      await legacyTap.flush({ timeoutMs: args.timeoutMs });
    }
  } catch (err) {
    runError = err; // reported in the summary; the tap is still closed below
  }

  if (args.exportFile) {
    const lines = service.exportSnapshot().map((r) => JSON.stringify(r));
    fs.writeFileSync(args.exportFile, lines.length ? `${lines.join('\n')}\n` : '');
  }

  /** @type {unknown} */
  let closeError = null;
  try {
    await legacyTap.close({ timeoutMs: runError === null ? args.timeoutMs : 0 });
  } catch (err) {
    closeError = err;
  }
  const errors = [runError, closeError]
    .filter((e) => e !== null)
    .map((e) => (e instanceof Error ? `${e.name}: ${e.message}` : String(e)));
  const summary = {
    assessments: args.count,
    ...outcome,
    topic: args.topic,
    emitter: legacyTap.emitterId,
    tap: legacyTap.stats(),
    droppedByReason: dropped,
    elapsedMs: Date.now() - started,
    ...(args.exportFile ? { export: args.exportFile } : {}),
    ...(errors.length > 0 ? { errors } : {}),
  };
  process.stdout.write(`${JSON.stringify(summary)}\n`);
  const s = summary.tap;
  return errors.length === 0 && s.dropped === 0 && s.oversized === 0 && s.unserializable === 0 ? 0 : 1;
}

async function main() {
  let args;
  try {
    args = parse();
  } catch (err) {
    process.stderr.write(`legacy-service: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    return 2;
  }
  if (args.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  try {
    return await run(args);
  } catch (err) {
    process.stderr.write(`legacy-service: ${err instanceof Error ? `${err.name}: ${err.message}` : String(err)}\n`);
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
