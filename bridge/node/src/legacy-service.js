'use strict';

const { EventEmitter } = require('node:events');
const { randomUUID } = require('node:crypto');
const { checksumHex, idHash, rowHash } = require('./canonical');

/**
 * @typedef {'pending'|'processing'|'completed'|'failed'|'cancelled'} LegacyStatus
 */

/**
 * A legacy assessment record, and one line of the JSON Lines export (docs/legacy-format.md).
 * @typedef {object} LegacyAssessment
 * @property {string} assessmentId
 * @property {LegacyStatus} status
 * @property {number} progress 0..100
 * @property {string|null} message
 * @property {unknown} request
 * @property {unknown} result
 * @property {string|null} error
 * @property {string} timestamp ISO-8601 creation time
 * @property {string} updatedAt ISO-8601 time of the last change
 * @property {number|null} duration ms from start (or creation) to the terminal state
 */

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const DEFAULT_ACTOR = 'legacy-service';

/**
 * One entry of the audit log: who changed which assessment, how, and when (GET /export/audit).
 * @typedef {object} AuditEntry
 * @property {string} auditId `<service instance id>:<seq>`: stable for as long as the service runs, so an
 *   entry exported twice is recognised as the same entry
 * @property {number} seq 1, 2, ... in the order the changes were made
 * @property {string} at ISO-8601 time of the change
 * @property {string} actor who made it (the request's actor header, else the service's default actor)
 * @property {'create'|'start'|'progress'|'complete'|'fail'|'cancel'|'reverse-sync'|'restore'|'purge'} operation
 * @property {string} assessmentId
 * @property {LegacyStatus|null} statusBefore null for a creation (or a restore of an unknown id)
 * @property {LegacyStatus|null} statusAfter
 */

/**
 * A sample of the legacy Node.js service the AssessmentStore replaces: assessments kept in a Map,
 * each state change announced on the EventEmitter as 'assessment.<what>' with a data object of the
 * legacy fields. It exists to exercise the tap and the bridge with realistic traffic.
 */
class LegacyAssessmentService extends EventEmitter {
  /** @type {Map<string, LegacyAssessment & {startedMs: number|null, createdMs: number}>} */
  #assessments = new Map();
  #newId;
  #now;
  /** @type {Map<string, number>} reverse-synced assessments -> seq of the last message applied */
  #imported = new Map();
  /**
   * id -> its hash (bucket) and its canonical row hash (null: changed since computed). Cached so that a
   * checksum request over a million records costs a sum, not a million md5s; every change drops the row hash.
   * @type {Map<string, {idHash: number, rowHash: bigint|null}>}
   */
  #digests = new Map();
  /** @type {AuditEntry[]} every change, oldest first (kept in memory, as the records are) */
  #audit = [];
  #auditPrefix;
  #defaultActor;
  /** @type {string|null} the actor of the change being made (set by asActor), null: the default */
  #actor = null;

  /**
   * @param {{newId?: () => string, now?: () => Date, actor?: string, instanceId?: string}} [options] id
   *   generator (default crypto.randomUUID), clock (default new Date()), the actor of changes made without
   *   one (default 'legacy-service'), and the prefix of audit ids (default a random UUID per instance)
   */
  constructor(options = {}) {
    super();
    this.#newId = options.newId || randomUUID;
    this.#now = options.now || (() => new Date());
    this.#defaultActor = options.actor || DEFAULT_ACTOR;
    this.#auditPrefix = options.instanceId || randomUUID();
  }

  /**
   * Runs `call` with `actor` as the actor of the changes it makes (the HTTP face passes its caller's).
   * The methods are synchronous, so no other change can interleave and take this actor.
   * @template T
   * @param {string|null|undefined} actor
   * @param {() => T} call
   * @returns {T}
   */
  asActor(actor, call) {
    const previous = this.#actor;
    this.#actor = actor || null;
    try {
      return call();
    } finally {
      this.#actor = previous;
    }
  }

  /**
   * The audit log, oldest first, of the ids starting with idPrefix. A generator: streamed, not copied whole.
   * @param {{idPrefix?: string}} [selection]
   * @returns {Generator<AuditEntry>}
   */
  *auditEntries({ idPrefix = '' } = {}) {
    // Bounded by the length at the start: entries appended while a slow reader streams are left for the next read.
    const end = this.#audit.length;
    for (let i = 0; i < end; i += 1) {
      const e = this.#audit[i];
      if (idPrefix === '' || e.assessmentId.startsWith(idPrefix)) yield { ...e };
    }
  }

  /**
   * @param {AuditEntry['operation']} operation
   * @param {string} assessmentId
   * @param {LegacyStatus|null} statusBefore
   * @param {LegacyStatus|null} statusAfter
   * @param {string} at
   * @param {string} [actor]
   */
  #record(operation, assessmentId, statusBefore, statusAfter, at, actor) {
    const seq = this.#audit.length + 1;
    this.#audit.push({
      auditId: `${this.#auditPrefix}:${seq}`,
      seq,
      at,
      actor: actor || this.#actor || this.#defaultActor,
      operation,
      assessmentId,
      statusBefore,
      statusAfter,
    });
  }

  /**
   * Creates a pending assessment; emits 'assessment.created'.
   * @param {unknown} request the request document, kept as given
   * @returns {string} the new assessment id
   */
  createAssessment(request) {
    const assessmentId = this.#newId();
    if (this.#assessments.has(assessmentId)) throw new Error(`assessment ${assessmentId} already exists`);
    const now = this.#now();
    const timestamp = now.toISOString();
    this.#assessments.set(assessmentId, {
      assessmentId,
      status: 'pending',
      progress: 0,
      message: null,
      request: request === undefined ? null : request,
      result: null,
      error: null,
      timestamp,
      updatedAt: timestamp,
      duration: null,
      createdMs: now.getTime(),
      startedMs: null,
    });
    this.#changed(assessmentId);
    this.#record('create', assessmentId, null, 'pending', timestamp);
    this.emit('assessment.created', { assessmentId, status: 'pending', progress: 0, timestamp, request });
    return assessmentId;
  }

  /**
   * pending -> processing; emits 'assessment.started'.
   * @param {string} assessmentId
   */
  startAssessment(assessmentId) {
    const a = this.#get(assessmentId, 'start', ['pending']);
    const now = this.#touch(a);
    a.status = 'processing';
    a.startedMs = now.getTime();
    this.#record('start', assessmentId, 'pending', 'processing', a.updatedAt);
    this.emit('assessment.started', {
      assessmentId,
      status: a.status,
      progress: a.progress,
      timestamp: a.updatedAt,
    });
  }

  /**
   * Records progress while pending or processing; emits 'assessment.progress'.
   * @param {string} assessmentId
   * @param {number} progress 0..100
   * @param {string} [message]
   */
  updateProgress(assessmentId, progress, message) {
    if (typeof progress !== 'number' || !Number.isFinite(progress) || progress < 0 || progress > 100) {
      throw new RangeError(`progress of assessment ${assessmentId} must be a number in [0, 100], got ${String(progress)}`);
    }
    const a = this.#get(assessmentId, 'update progress of', ['pending', 'processing']);
    this.#touch(a);
    a.progress = progress;
    a.message = message === undefined ? null : message;
    this.#record('progress', assessmentId, a.status, a.status, a.updatedAt);
    this.emit('assessment.progress', {
      assessmentId,
      status: a.status,
      progress,
      message: a.message,
      timestamp: a.updatedAt,
    });
  }

  /**
   * processing -> completed; emits 'assessment.completed' with the result and duration (ms).
   * @param {string} assessmentId
   * @param {unknown} result
   */
  completeAssessment(assessmentId, result) {
    const a = this.#get(assessmentId, 'complete', ['processing']);
    const now = this.#touch(a);
    a.status = 'completed';
    a.progress = 100;
    a.result = result === undefined ? null : result;
    a.duration = now.getTime() - (a.startedMs ?? a.createdMs);
    this.#record('complete', assessmentId, 'processing', 'completed', a.updatedAt);
    this.emit('assessment.completed', {
      assessmentId,
      status: a.status,
      progress: a.progress,
      result: a.result,
      duration: a.duration,
      timestamp: a.updatedAt,
    });
  }

  /**
   * pending|processing -> failed; emits 'assessment.failed'.
   * @param {string} assessmentId
   * @param {Error|string} error
   */
  failAssessment(assessmentId, error) {
    const a = this.#get(assessmentId, 'fail', ['pending', 'processing']);
    const before = a.status;
    const now = this.#touch(a);
    a.status = 'failed';
    a.error = error instanceof Error ? error.message : String(error);
    a.duration = now.getTime() - (a.startedMs ?? a.createdMs);
    this.#record('fail', assessmentId, before, 'failed', a.updatedAt);
    this.emit('assessment.failed', {
      assessmentId,
      status: a.status,
      progress: a.progress,
      error: a.error,
      duration: a.duration,
      timestamp: a.updatedAt,
    });
  }

  /**
   * pending|processing -> cancelled; emits 'assessment.cancelled'.
   * @param {string} assessmentId
   */
  cancelAssessment(assessmentId) {
    const a = this.#get(assessmentId, 'cancel', ['pending', 'processing']);
    const before = a.status;
    const now = this.#touch(a);
    a.status = 'cancelled';
    a.duration = now.getTime() - (a.startedMs ?? a.createdMs);
    this.#record('cancel', assessmentId, before, 'cancelled', a.updatedAt);
    this.emit('assessment.cancelled', {
      assessmentId,
      status: a.status,
      progress: a.progress,
      duration: a.duration,
      timestamp: a.updatedAt,
    });
  }

  /**
   * Like createAssessment, with an id chosen by the caller (the dual-mode router fixes the id before it
   * routes, so both sides know an assessment by the same id); emits 'assessment.created'.
   * @param {string} assessmentId
   * @param {unknown} request
   * @returns {string} assessmentId
   */
  createAssessmentWithId(assessmentId, request) {
    if (typeof assessmentId !== 'string' || assessmentId.length === 0) {
      throw new TypeError('assessmentId must be a non-empty string');
    }
    const previous = this.#newId;
    this.#newId = () => assessmentId;
    try {
      return this.createAssessment(request);
    } finally {
      this.#newId = previous;
    }
  }

  /**
   * Applies one message of the reverse sync (`legacy.assessment-events.reverse`: an assessment written
   * through the store, in the legacy message format) to the in-memory store WITHOUT emitting any
   * 'assessment.*' event, so a tap on this service does not send it back to the store. Instead it emits
   * 'reverse.imported' (not a tapped event) with `{assessmentId, reverseId, seq, status}`.
   *
   * Deduplication: messages of one assessment carry seq = the store's event version (1, 2, ...) and
   * reverseId = `<assessmentId>:<seq>`; a message whose seq is not above the last one applied for its
   * assessment is a re-delivery or a re-read and is skipped. Messages also apply to an assessment this
   * service created itself: it was created here and later served by the store (the rollout percentage
   * went up); its store-side changes must reach this side too. A record that is already finished here
   * (completed, failed, cancelled) is never moved to another status ('conflict', not applied): the two
   * sides disagree on how it ended, and the count makes that visible.
   *
   * @param {{event: string, data: Record<string, any>, seq: number, reverseId?: string, emittedAt?: string}} message
   * @returns {'applied'|'duplicate'|'conflict'|'invalid'}
   */
  importReverseMessage(message) {
    if (message === null || typeof message !== 'object' || typeof message.event !== 'string') return 'invalid';
    const data = message.data;
    if (data === null || typeof data !== 'object' || typeof data.assessmentId !== 'string') return 'invalid';
    const seq = message.seq;
    if (!Number.isInteger(seq) || seq < 1) return 'invalid';
    const id = data.assessmentId;
    if (message.reverseId !== undefined && message.reverseId !== `${id}:${seq}`) return 'invalid';
    const name = message.event.startsWith('assessment.') ? message.event.slice('assessment.'.length) : '';
    const STATUS = /** @type {Record<string, LegacyStatus|null>} */ ({
      created: 'pending', started: 'processing', progress: null, completed: 'completed', failed: 'failed',
      cancelled: 'cancelled',
    });
    if (!(name in STATUS)) return 'invalid';
    const at = typeof data.timestamp === 'string' ? data.timestamp : (message.emittedAt ?? this.#now().toISOString());
    let a = this.#assessments.get(id);
    const last = this.#imported.get(id) ?? 0;
    if (seq <= last) return 'duplicate';
    const before = a ? a.status : null;
    const status = STATUS[name];
    if (a && TERMINAL.has(a.status) && (status === null || status !== a.status)) return 'conflict';
    if (!a) {
      // Normally the 'created' message (seq 1) comes first (one partition per id, in order); should a
      // later message arrive first, the record is started from it and filled in as messages come.
      const ms = Date.parse(at);
      a = {
        assessmentId: id, status: 'pending', progress: 0, message: null, request: null, result: null,
        error: null, timestamp: at, updatedAt: at, duration: null,
        createdMs: Number.isFinite(ms) ? ms : this.#now().getTime(), startedMs: null,
      };
      this.#assessments.set(id, a);
    }
    if (status !== null) a.status = status;
    if (typeof data.status === 'string' && name === 'progress') a.status = data.status;
    if (typeof data.progress === 'number') a.progress = data.progress;
    if (name === 'progress') a.message = data.message ?? null;
    if (name === 'created') {
      a.request = data.request === undefined ? null : data.request;
      a.timestamp = at;
    }
    if (name === 'started') {
      const ms = Date.parse(at);
      if (Number.isFinite(ms)) a.startedMs = ms;
    }
    if (name === 'completed') a.result = data.result === undefined ? null : data.result;
    if (name === 'failed') a.error = data.error ?? null;
    if ('duration' in data && data.duration !== undefined) a.duration = data.duration;
    a.updatedAt = at;
    this.#changed(id);
    this.#imported.set(id, seq);
    // Written by the store, carried here by the reverse sync: the actor is the sync, whoever asked the store.
    this.#record('reverse-sync', id, before, a.status, at, 'reverse-sync');
    this.emit('reverse.imported', { assessmentId: id, reverseId: `${id}:${seq}`, seq, status: a.status });
    return 'applied';
  }

  /**
   * @param {string} assessmentId
   * @returns {number} the seq (store version) of the last reverse-synced message applied, 0 when the
   *   assessment was not imported
   */
  importedVersion(assessmentId) {
    return this.#imported.get(assessmentId) ?? 0;
  }

  /**
   * @param {string} assessmentId
   * @returns {LegacyAssessment|null} a copy, or null when unknown
   */
  getAssessment(assessmentId) {
    const a = this.#assessments.get(assessmentId);
    return a ? exportRecord(a) : null;
  }

  /** @returns {LegacyAssessment[]} copies, in creation order */
  getAllAssessments() {
    return [...this.#assessments.values()].map(exportRecord);
  }

  /**
   * The legacy export: one record per assessment, the fields of the JSON Lines export format
   * (`exportSnapshot().map(r => JSON.stringify(r)).join('\n')`).
   * @returns {LegacyAssessment[]}
   */
  exportSnapshot() {
    return this.getAllAssessments();
  }

  /**
   * @param {string} assessmentId
   * @param {string} action
   * @param {LegacyStatus[]} allowed
   */
  #get(assessmentId, action, allowed) {
    const a = this.#assessments.get(assessmentId);
    if (!a) throw new Error(`cannot ${action} assessment ${assessmentId}: not found`);
    if (!allowed.includes(a.status)) {
      const why = TERMINAL.has(a.status) ? 'it is already final' : `allowed from ${allowed.join(' or ')}`;
      throw new Error(`cannot ${action} assessment ${assessmentId} in status '${a.status}' (${why})`);
    }
    return a;
  }

  /** @param {LegacyAssessment} a */
  #touch(a) {
    const now = this.#now();
    a.updatedAt = now.toISOString();
    this.#changed(a.assessmentId);
    return now;
  }

  /** @param {string} assessmentId */
  #changed(assessmentId) {
    const d = this.#digests.get(assessmentId);
    if (d) d.rowHash = null;
  }

  /** @param {string} assessmentId */
  #entry(assessmentId) {
    let d = this.#digests.get(assessmentId);
    if (!d) {
      d = { idHash: idHash(assessmentId), rowHash: null };
      this.#digests.set(assessmentId, d);
    }
    return d;
  }

  /**
   * Restores records of a JSON Lines export (the inverse of exportSnapshot), as they are: no event is
   * emitted, so a tap does not send them to the store. A record whose id exists replaces it.
   * @param {Record<string, any>} record
   * @returns {'loaded'|'replaced'|'invalid'}
   */
  restoreRecord(record) {
    if (record === null || typeof record !== 'object' || typeof record.assessmentId !== 'string' || record.assessmentId === '') {
      return 'invalid';
    }
    const id = record.assessmentId;
    const previous = this.#assessments.get(id);
    const existed = previous !== undefined;
    /** @param {unknown} v */
    const orNull = (v) => (v === undefined ? null : v);
    const created = typeof record.timestamp === 'string' ? Date.parse(record.timestamp) : NaN;
    this.#assessments.set(id, {
      assessmentId: id,
      status: record.status,
      progress: record.progress,
      message: orNull(record.message),
      request: orNull(record.request),
      result: orNull(record.result),
      error: orNull(record.error),
      timestamp: record.timestamp,
      updatedAt: record.updatedAt,
      duration: orNull(record.duration),
      createdMs: Number.isFinite(created) ? created : this.#now().getTime(),
      startedMs: null,
    });
    this.#changed(id);
    // A restore sets a state, it makes no transition: the audit says so, and a check of the log's
    // transitions starts again from it.
    this.#record('restore', id, previous ? previous.status : null, typeof record.status === 'string' ? record.status : null,
      this.#now().toISOString());
    return existed ? 'replaced' : 'loaded';
  }

  /**
   * Removes assessments that were migrated and archived elsewhere (the last step of a migration,
   * `assessment-store migrate cleanup`); no emission (the store already holds them), an audit entry each.
   * Idempotent: an id already gone is counted as missing, so a cleanup interrupted mid-batch resumes.
   * @param {string[]} ids
   * @returns {{purged: number, missing: number}}
   */
  purge(ids) {
    let purged = 0;
    let missing = 0;
    const at = this.#now().toISOString();
    for (const id of ids) {
      const a = this.#assessments.get(id);
      if (a === undefined) {
        missing += 1;
        continue;
      }
      this.#assessments.delete(id);
      this.#digests.delete(id);
      this.#record('purge', id, a.status, null, at);
      purged += 1;
    }
    return { purged, missing };
  }

  /**
   * Per-bucket count and checksum of the canonical records (src/canonical.js), over the ids starting with
   * idPrefix; only non-empty buckets are listed.
   * @param {number} buckets
   * @param {string} [idPrefix]
   * @returns {{total: number, checksums: Array<[number, number, string]>}}
   */
  checksums(buckets, idPrefix = '') {
    // Dense per-bucket arrays, and one walk over the records that reuses the entry it holds (no second
    // lookup); the sums are reduced mod 2^64 once at the end (checksumHex), not once per record.
    const counts = new Uint32Array(buckets);
    /** @type {bigint[]} */
    const sums = new Array(buckets).fill(0n);
    let total = 0;
    const scoped = idPrefix !== '';
    for (const [id, a] of this.#assessments) {
      if (scoped && !id.startsWith(idPrefix)) continue;
      const d = this.#entry(id);
      if (d.rowHash === null) d.rowHash = rowHash(a);
      const b = d.idHash % buckets;
      counts[b] += 1;
      sums[b] += d.rowHash;
      total += 1;
    }
    /** @type {Array<[number, number, string]>} */
    const checksums = [];
    for (let b = 0; b < buckets; b++) {
      if (counts[b] > 0) checksums.push([b, counts[b], checksumHex(sums[b])]);
    }
    return { total, checksums };
  }

  /**
   * How many records there are per status, over the ids starting with idPrefix (no copies made).
   * @param {string} [idPrefix]
   * @returns {{total: number, byStatus: Record<string, number>}}
   */
  statusCounts(idPrefix = '') {
    /** @type {Record<string, number>} */
    const byStatus = {};
    let total = 0;
    for (const [id, a] of this.#assessments) {
      if (idPrefix !== '' && !id.startsWith(idPrefix)) continue;
      byStatus[String(a.status)] = (byStatus[String(a.status)] ?? 0) + 1;
      total += 1;
    }
    return { total, byStatus };
  }

  /**
   * The export records of the given buckets (all when bucketIds is null), ids starting with idPrefix.
   * A generator, so a caller can stream a million records without building them all at once.
   * @param {{buckets?: number, bucketIds?: Set<number>|null, idPrefix?: string}} [selection]
   * @returns {Generator<LegacyAssessment>}
   */
  *exportRecords({ buckets = 1, bucketIds = null, idPrefix = '' } = {}) {
    const scoped = idPrefix !== '';
    for (const [id, a] of this.#assessments) {
      if (scoped && !id.startsWith(idPrefix)) continue;
      if (bucketIds !== null && !bucketIds.has(this.#entry(id).idHash % buckets)) continue;
      yield exportRecord(a);
    }
  }
}

/**
 * @param {LegacyAssessment} a
 * @returns {LegacyAssessment}
 */
function exportRecord(a) {
  return structuredClone({
    assessmentId: a.assessmentId,
    status: a.status,
    progress: a.progress,
    message: a.message,
    request: a.request,
    result: a.result,
    error: a.error,
    timestamp: a.timestamp,
    updatedAt: a.updatedAt,
    duration: a.duration,
  });
}

module.exports = { LegacyAssessmentService, DEFAULT_ACTOR };
