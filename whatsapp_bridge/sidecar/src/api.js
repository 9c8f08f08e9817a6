// The sidecar's HTTP API for the host: send a text, show typing, report health.
//
// Bound to 127.0.0.1 by `main.js`; every request, `/health` included, must carry
// `X-Callengine-Secret`, compared in constant time (SHA-256 of both sides, then
// `crypto.timingSafeEqual`, so neither the content nor the length leaks through timing).
//
//   POST /send    {"to": "<jid or E.164>", "text": "..."}              -> 200 {"id": "<message id>"}
//   POST /typing  {"to": "...", "state": "composing" | "paused"}       -> 200 {"ok": true}
//   GET  /health                                                      -> 200 {"connected", "me", "queue", "qr"}
//   GET  /metrics                                                     -> 200 counters (JSON)
//
// Errors are JSON `{"error": "<message naming the field>"}`: 400 bad body, 401 secret, 404/405
// route, 413 body over `maxBodyBytes`, 503 WhatsApp not connected, 502 WhatsApp refused the send.
//
// The WhatsApp side is a `transport` object (see `Transport` below); `whatsapp.js` provides the
// Baileys one and tests pass a fake that records calls. Handlers run on the event loop; the only
// awaits are the body read and the transport call.

import crypto from 'node:crypto';
import http from 'node:http';
import { InvalidRecipientError, normalizeRecipient } from './normalize.js';
import { silentLogger } from './log.js';

/**
 * @typedef {object} Transport
 * @property {() => boolean} isConnected
 * @property {() => string} me              our bare JID, '' when not paired
 * @property {() => boolean} qrPending      a QR is waiting to be scanned
 * @property {(jid: string, text: string) => Promise<{id: string}>} sendText
 * @property {(jid: string, state: 'composing' | 'paused') => Promise<void>} sendTyping
 */

export const MAX_TEXT_CHARS = 65_536; // WhatsApp's limit for one text message
const TYPING_STATES = new Set(['composing', 'paused']);

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function digest(s) {
  return crypto.createHash('sha256').update(String(s), 'utf8').digest();
}

/**
 * Constant-time check of the shared secret.
 *
 * @param {string | string[] | undefined} given header value
 * @param {Buffer} expectedDigest SHA-256 of the configured secret
 */
export function secretMatches(given, expectedDigest) {
  if (typeof given !== 'string' || given === '') return false;
  return crypto.timingSafeEqual(digest(given), expectedDigest);
}

function readJson(req, maxBytes) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (c) => {
      size += c.length;
      if (size > maxBytes) tooBig = true;
      else chunks.push(c);
    });
    req.on('end', () => {
      if (tooBig) return reject(new HttpError(413, `body larger than ${maxBytes} bytes`));
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        return reject(new HttpError(400, 'body must be a JSON object'));
      }
      if (!body || typeof body !== 'object' || Array.isArray(body)) {
        return reject(new HttpError(400, 'body must be a JSON object'));
      }
      resolve(body);
    });
    req.on('error', reject);
  });
}

function recipient(body) {
  if (!('to' in body)) throw new HttpError(400, 'missing field "to"');
  try {
    return normalizeRecipient(body.to);
  } catch (err) {
    if (err instanceof InvalidRecipientError) throw new HttpError(400, err.message);
    throw err;
  }
}

function send(res, status, obj) {
  const data = JSON.stringify(obj);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

/**
 * Build the API server (not listening yet; the caller owns `listen` and `close`).
 *
 * @param {object} deps
 * @param {Transport} deps.transport
 * @param {string} deps.secret non-empty
 * @param {() => number} deps.queueSize pending inbound items
 * @param {() => object} [deps.metrics] counters for `/metrics`
 * @param {import('pino').Logger} [deps.logger]
 * @param {number} [deps.maxBodyBytes=262144]
 * @returns {import('node:http').Server}
 */
export function createApiServer({ transport, secret, queueSize, metrics = () => ({}), logger = silentLogger, maxBodyBytes = 256 * 1024 }) {
  if (typeof secret !== 'string' || secret === '') throw new Error('createApiServer: secret must be a non-empty string');
  const expected = digest(secret);

  const routes = {
    'POST /send': async (req) => {
      const body = await readJson(req, maxBodyBytes);
      const jid = recipient(body);
      if (typeof body.text !== 'string' || body.text.trim() === '') {
        throw new HttpError(400, 'field "text" must be a non-empty string');
      }
      if (body.text.length > MAX_TEXT_CHARS) throw new HttpError(400, `field "text" longer than ${MAX_TEXT_CHARS} characters`);
      if (!transport.isConnected()) throw new HttpError(503, 'whatsapp not connected');
      let sent;
      try {
        sent = await transport.sendText(jid, body.text);
      } catch (err) {
        logger.warn({ to: jid, err: err.message }, 'whatsapp send failed');
        throw new HttpError(502, `whatsapp send failed: ${err.message}`);
      }
      return [200, { id: sent.id }];
    },
    'POST /typing': async (req) => {
      const body = await readJson(req, maxBodyBytes);
      const jid = recipient(body);
      if (!TYPING_STATES.has(body.state)) throw new HttpError(400, 'field "state" must be "composing" or "paused"');
      if (!transport.isConnected()) throw new HttpError(503, 'whatsapp not connected');
      try {
        await transport.sendTyping(jid, body.state);
      } catch (err) {
        throw new HttpError(502, `whatsapp presence update failed: ${err.message}`);
      }
      return [200, { ok: true }];
    },
    'GET /health': async () => [200, {
      connected: transport.isConnected(),
      me: transport.me() || '',
      queue: queueSize(),
      qr: transport.qrPending(),
    }],
    'GET /metrics': async () => [200, metrics()],
  };
  const paths = new Set(Object.keys(routes).map((k) => k.split(' ')[1]));

  const server = http.createServer(async (req, res) => {
    try {
      if (!secretMatches(req.headers['x-callengine-secret'], expected)) {
        req.resume();
        return send(res, 401, { error: 'missing or wrong X-Callengine-Secret' });
      }
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      const handler = routes[`${req.method} ${path}`];
      if (!handler) {
        req.resume();
        return paths.has(path) ? send(res, 405, { error: `method ${req.method} not allowed on ${path}` })
          : send(res, 404, { error: `no route ${path}` });
      }
      const [status, obj] = await handler(req);
      send(res, status, obj);
    } catch (err) {
      if (err instanceof HttpError) {
        if (err.status === 413) res.setHeader('Connection', 'close');
        return send(res, err.status, { error: err.message });
      }
      logger.error({ err: err.message, stack: err.stack }, 'api handler failed');
      if (!res.headersSent) send(res, 500, { error: 'internal error' });
      else res.destroy();
    }
  });
  server.keepAliveTimeout = 65_000; // the host keeps a connection open between replies
  return server;
}
