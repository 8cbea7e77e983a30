'use strict';

/**
 * @assessment-store/legacy-tap: forwards a legacy EventEmitter assessment service's emissions to
 * Kafka (tap), the sticky rollout routing shared with the Python bridge (routeToStore, bucket),
 * a sample legacy service (LegacyAssessmentService) and its HTTP face (startLegacyHttp, createHandler).
 */

const { tap, LegacyTap, LEGACY_EVENTS } = require('./src/tap');
const { routeToStore, bucket, threshold, BUCKETS } = require('./src/routing');
const { LegacyAssessmentService } = require('./src/legacy-service');
const { LegacyTapError, TapFlushTimeoutError, TapCloseError } = require('./src/errors');
const { DEFAULTS } = require('./src/options');
const { ensureTopic } = require('./src/topics');
const { startLegacyHttp, createHandler } = require('./src/http');

module.exports = {
  tap,
  LegacyTap,
  LEGACY_EVENTS,
  DEFAULTS,
  routeToStore,
  bucket,
  threshold,
  BUCKETS,
  LegacyAssessmentService,
  startLegacyHttp,
  createHandler,
  ensureTopic,
  LegacyTapError,
  TapFlushTimeoutError,
  TapCloseError,
};
