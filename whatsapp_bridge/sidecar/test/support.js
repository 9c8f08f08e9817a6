// Shared test fixtures (not a test file; `node --test test/` loads it as one and finds no tests).
//
// `startFakeHost` is a real HTTP server on loopback standing in for the callengine host: it
// records every request (method, path, headers, parsed body) and answers from a script of
// statuses, then 200 once the script is used up.

import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';

export function tmpDir(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'wa-sidecar-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * @param {import('node:test').TestContext} t
 * @param {{script?: number[], onRequest?: (rec: object) => void}} [opts]
 */
export async function startFakeHost(t, { script = [], onRequest } = {}) {
  const requests = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const raw = Buffer.concat(chunks).toString('utf8');
      let body;
      try { body = JSON.parse(raw); } catch { body = raw; }
      const status = script.length ? script.shift() : 200;
      const rec = { method: req.method, path: req.url, headers: req.headers, body, status, port: req.socket.remotePort };
      requests.push(rec);
      onRequest?.(rec);
      res.writeHead(status, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ ok: status < 300 }));
      for (const w of waiters.splice(0)) w();
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => new Promise((r) => { server.closeAllConnections(); server.close(r); }));
  const url = `http://127.0.0.1:${server.address().port}`;
  /** Resolve once `pred(requests)` holds (checked after every request), or fail after 5 s. */
  const waitFor = async (pred) => {
    const deadline = Date.now() + 5000;
    while (!pred(requests)) {
      if (Date.now() > deadline) throw new Error(`fake host: condition not met; got ${requests.length} requests`);
      await Promise.race([new Promise((r) => waiters.push(r)), new Promise((r) => setTimeout(r, 200))]);
    }
  };
  return { url, requests, waitFor, server };
}

export function payload(n, chat = '972541234567@s.whatsapp.net') {
  return { id: `MSG${n}`, chat, from: chat, push_name: 'Dana', text: `hello ${n}`, timestamp: 1_700_000_000 + n, to: '972500000000@s.whatsapp.net' };
}
