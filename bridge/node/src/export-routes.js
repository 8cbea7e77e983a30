'use strict';

/**
 * The export endpoints of the sample legacy service's HTTP face (src/http.js), what a validation of the
 * migration (`assessment-store migrate validate`, docs/migration.md) needs from a legacy service:
 *
 *   GET  /export[?buckets=N&bucket=B,B,...&idPrefix=P]   JSON Lines of export records (docs/legacy-format.md),
 *        streamed; with bucket=..., only the records of those buckets (src/canonical.js bucketOf(id, N))
 *   GET  /export/checksums?buckets=N[&idPrefix=P]         -> 200 {buckets, total, checksums: [[bucket, count, hex]]}
 *        per non-empty bucket, the count and the sum mod 2^64 of the canonical row hashes (16 hex digits)
 *   GET  /export/counts[?idPrefix=P]                     -> 200 {total, byStatus: {status: count}}
 *   GET  /export/audit[?idPrefix=P]                       JSON Lines of the audit log, oldest first, streamed:
 *        {auditId, seq, at, actor, operation, assessmentId, statusBefore, statusAfter} (src/legacy-service.js)
 *   POST /admin/purge                                     {"ids": [...]} (at most 10,000): removes migrated
 *        assessments -> 200 {purged, missing}; idempotent (what `assessment-store migrate cleanup` calls)
 *   POST /snapshot                                        JSON Lines body of export records, restored as they
 *        are, without emissions (a seed: tests, benchmarks, a restore) -> 200 {loaded, replaced, invalid}
 *
 * idPrefix scopes every answer to the ids starting with it. Errors as the rest of the face:
 * 400 {error: 'ValidationError', field, reason}.
 */

const readline = require('node:readline');

const MAX_BUCKETS = 1 << 20;
const LINES_PER_WRITE = 512;

class ExportRequestError extends Error {
  /**
   * @param {string} field
   * @param {string} reason
   */
  constructor(field, reason) {
    super(`${field} ${reason}`);
    this.field = field;
    this.reason = reason;
  }
}

/**
 * @param {URLSearchParams} params
 * @param {boolean} required
 * @returns {number}
 */
function bucketsParam(params, required) {
  const raw = params.get('buckets');
  if (raw === null) {
    if (required) throw new ExportRequestError('buckets', 'is required');
    return 1;
  }
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1 || n > MAX_BUCKETS) {
    throw new ExportRequestError('buckets', `must be an integer in [1, ${MAX_BUCKETS}]`);
  }
  return n;
}

/**
 * @param {URLSearchParams} params
 * @param {number} buckets
 * @returns {Set<number>|null}
 */
function bucketIdsParam(params, buckets) {
  const raw = params.getAll('bucket');
  if (raw.length === 0) return null;
  if (params.get('buckets') === null) throw new ExportRequestError('buckets', 'is required with bucket');
  const ids = new Set();
  for (const part of raw.join(',').split(',')) {
    if (part === '') continue;
    const b = Number(part);
    if (!Number.isInteger(b) || b < 0 || b >= buckets) {
      throw new ExportRequestError('bucket', `must be integers in [0, ${buckets - 1}], got ${JSON.stringify(part)}`);
    }
    ids.add(b);
  }
  return ids;
}

/**
 * @param {import('node:http').ServerResponse} res
 * @returns {Promise<void>} once the socket drained, or closed (then nothing more is written)
 */
function drained(res) {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

/**
 * @param {import('node:http').ServerResponse} res
 * @param {number} status
 * @param {unknown} payload
 */
function sendJson(res, status, payload) {
  if (res.writableEnded || res.destroyed) return;
  const text = JSON.stringify(payload);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

/**
 * @param {import('./legacy-service').LegacyAssessmentService} service
 * @param {import('node:http').IncomingMessage} req
 * @param {import('node:http').ServerResponse} res
 * @param {URL} url
 */
async function streamExport(service, req, res, url) {
  const buckets = bucketsParam(url.searchParams, false);
  const bucketIds = bucketIdsParam(url.searchParams, buckets);
  const idPrefix = url.searchParams.get('idPrefix') ?? '';
  await streamLines(res, service.exportRecords({ buckets, bucketIds, idPrefix }));
}

/**
 * Writes each item as one JSON line, LINES_PER_WRITE at a time, waiting for the socket to drain
 * (bounded memory however large the export).
 * @param {import('node:http').ServerResponse} res
 * @param {Iterable<unknown>} items
 */
async function streamLines(res, items) {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  let lines = [];
  for (const record of items) {
    lines.push(JSON.stringify(record));
    if (lines.length >= LINES_PER_WRITE) {
      const more = res.write(`${lines.join('\n')}\n`);
      lines = [];
      if (!more) await drained(res);
      if (res.destroyed) return;
    }
  }
  if (lines.length > 0) res.write(`${lines.join('\n')}\n`);
  res.end();
}

/**
 * @param {import('./legacy-service').LegacyAssessmentService} service
 * @param {import('node:http').IncomingMessage} req
 */
async function restore(service, req) {
  const raw = req.headers['x-actor'];
  const actor = (Array.isArray(raw) ? raw[0] : raw)?.slice(0, 200);
  const counts = { loaded: 0, replaced: 0, invalid: 0 };
  const lines = readline.createInterface({ input: req, crlfDelay: Infinity });
  for await (const line of lines) {
    if (line.trim() === '') continue;
    let record;
    try {
      record = JSON.parse(line);
    } catch {
      counts.invalid += 1;
      continue;
    }
    counts[service.asActor(actor, () => service.restoreRecord(record))] += 1;
  }
  return counts;
}

/**
 * Answers the export routes; false when the request is not one of them (the caller routes it).
 * @param {import('./legacy-service').LegacyAssessmentService} service
 * @param {import('node:http').IncomingMessage} req
 * @param {import('node:http').ServerResponse} res
 * @returns {boolean}
 */
function handleExport(service, req, res) {
  const url = new URL(req.url || '/', 'http://localhost');
  const method = req.method || 'GET';
  let work;
  if (url.pathname === '/export' && method === 'GET') {
    work = streamExport(service, req, res, url);
  } else if (url.pathname === '/export/checksums' && method === 'GET') {
    work = (async () => {
      const buckets = bucketsParam(url.searchParams, true);
      const { total, checksums } = service.checksums(buckets, url.searchParams.get('idPrefix') ?? '');
      sendJson(res, 200, { buckets, total, checksums });
    })();
  } else if (url.pathname === '/export/audit' && method === 'GET') {
    work = streamLines(res, service.auditEntries({ idPrefix: url.searchParams.get('idPrefix') ?? '' }));
  } else if (url.pathname === '/export/counts' && method === 'GET') {
    work = (async () => sendJson(res, 200, service.statusCounts(url.searchParams.get('idPrefix') ?? '')))();
  } else if (url.pathname === '/admin/purge' && method === 'POST') {
    work = purge(service, req).then((counts) => sendJson(res, 200, counts));
  } else if (url.pathname === '/snapshot' && method === 'POST') {
    work = restore(service, req).then((counts) => sendJson(res, 200, counts));
  } else {
    return false;
  }
  work.catch((err) => {
    if (err instanceof ExportRequestError) {
      sendJson(res, 400, { error: 'ValidationError', field: err.field, reason: err.reason });
    } else if (!res.headersSent) {
      sendJson(res, 500, { error: 'Internal', message: err instanceof Error ? err.message : String(err) });
    } else {
      res.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  });
  return true;
}

const MAX_PURGE_IDS = 10000;
const MAX_PURGE_BYTES = 4 * 1024 * 1024;

/**
 * @param {import('./legacy-service').LegacyAssessmentService} service
 * @param {import('node:http').IncomingMessage} req
 * @returns {Promise<{purged: number, missing: number}>}
 */
async function purge(service, req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_PURGE_BYTES) throw new ExportRequestError('body', `is larger than ${MAX_PURGE_BYTES} bytes`);
    chunks.push(chunk);
  }
  let doc;
  try {
    doc = JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (err) {
    throw new ExportRequestError('body', 'is not JSON');
  }
  const ids = doc && doc.ids;
  if (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string' || id === '')) {
    throw new ExportRequestError('ids', 'must be a list of non-empty strings');
  }
  if (ids.length > MAX_PURGE_IDS) throw new ExportRequestError('ids', `must hold at most ${MAX_PURGE_IDS} ids`);
  return service.purge(ids);
}

module.exports = { handleExport, MAX_BUCKETS };
