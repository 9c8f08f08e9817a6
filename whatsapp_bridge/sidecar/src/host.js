// HTTP client for the callengine host (Python, usually on loopback).
//
// One keep-alive agent per client, so inbound deliveries reuse a TCP connection instead of paying
// a handshake per message. The agent drops idle sockets after `idleSocketMs` (default 4 s, below
// hypercorn's 5 s keep-alive timeout) so we rarely write into a socket the server is closing; when
// it happens anyway (ECONNRESET on a reused socket, the case Node's docs describe for
// `request.reusedSocket`), the request is retried once at once on a fresh socket. Every other
// failure is returned to the caller, who decides about retries.

import http from 'node:http';
import https from 'node:https';

/** A transport-level failure (refused, reset, timeout): the request may not have arrived. */
export class HostUnreachableError extends Error {
  constructor(message, code) {
    super(message);
    this.name = 'HostUnreachableError';
    this.code = code;
  }
}

export class HostClient {
  /**
   * @param {object} opts
   * @param {string} opts.baseUrl e.g. `http://127.0.0.1:8080`
   * @param {string} opts.secret  sent as `X-Callengine-Secret`
   * @param {number} [opts.timeoutMs=10000] whole-request deadline
   * @param {number} [opts.idleSocketMs=4000]
   */
  constructor({ baseUrl, secret, timeoutMs = 10_000, idleSocketMs = 4_000 }) {
    this.base = new URL(baseUrl);
    this.secret = secret;
    this.timeoutMs = timeoutMs;
    const lib = this.base.protocol === 'https:' ? https : http;
    this.lib = lib;
    this.agent = new lib.Agent({ keepAlive: true, maxSockets: 4, timeout: idleSocketMs });
  }

  /**
   * POST `body` as JSON to `path` (relative to the base URL).
   *
   * Runs on the event loop; never rejects for an HTTP status, only for transport failures.
   *
   * @param {string} path e.g. `/whatsapp/baileys`
   * @param {unknown} body
   * @param {{signal?: AbortSignal}} [opts]
   * @returns {Promise<{status: number, headers: import('node:http').IncomingHttpHeaders, body: string}>}
   * @throws {HostUnreachableError}
   */
  async postJson(path, body, { signal } = {}) {
    const data = Buffer.from(JSON.stringify(body));
    try {
      return await this.#request(path, data, signal);
    } catch (err) {
      if (err.reusedSocket && err.code === 'ECONNRESET' && !signal?.aborted) {
        return this.#request(path, data, signal);
      }
      throw err;
    }
  }

  #request(path, data, signal) {
    const url = new URL(path.replace(/^\//, ''), this.base.href.endsWith('/') ? this.base.href : `${this.base.href}/`);
    return new Promise((resolve, reject) => {
      const req = this.lib.request(url, {
        method: 'POST',
        agent: this.agent,
        signal,
        headers: {
          'Content-Type': 'application/json',
          'Content-Length': data.length,
          'X-Callengine-Secret': this.secret,
        },
      });
      const timer = setTimeout(() => {
        // Settle here as well: once a response has begun, destroying the request does not
        // always surface as an error on it. A promise settles once; later events are ignored.
        const err = new HostUnreachableError(`no answer from host within ${this.timeoutMs} ms`, 'ETIMEDOUT');
        req.destroy(err);
        reject(err);
      }, this.timeoutMs);
      req.on('response', (res) => {
        const chunks = [];
        let size = 0;
        res.on('data', (c) => {
          size += c.length;
          if (size <= 64 * 1024) chunks.push(c); // keep draining so the socket can be reused
        });
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') });
        });
        res.on('error', (err) => {
          clearTimeout(timer);
          reject(new HostUnreachableError(`host response broke: ${err.message}`, err.code));
        });
      });
      req.on('error', (err) => {
        clearTimeout(timer);
        const e = new HostUnreachableError(`host unreachable: ${err.message}`, err.code ?? err.name);
        e.reusedSocket = req.reusedSocket;
        reject(e);
      });
      req.end(data);
    });
  }

  /** Close idle keep-alive sockets. In-flight requests finish or fail on their own. */
  close() {
    this.agent.destroy();
  }
}
