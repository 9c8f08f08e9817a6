import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import test from 'node:test';
import { backoffDelay } from '../src/backoff.js';
import { Deliverer, DeliveryStats, INBOUND_PATH, classifyStatus } from '../src/delivery.js';
import { HostClient } from '../src/host.js';
import { DurableQueue } from '../src/queue.js';
import { payload, startFakeHost, tmpDir } from './support.js';

const SECRET = 's3cret-for-tests';

/** Deliverer whose backoff sleeps are recorded and skipped: no wall-clock waiting in tests. */
function makeDeliverer(t, queue, url, extra = {}) {
  const host = new HostClient({ baseUrl: url, secret: SECRET, ...(extra.hostOpts ?? {}) });
  const delays = [];
  const stats = new DeliveryStats();
  const d = new Deliverer({
    queue, host, stats, random: () => 0.5,
    sleep: async (ms) => { delays.push(ms); },
    ...extra.deliverer,
  });
  t.after(async () => { await d.stop(); host.close(); });
  return { d, delays, stats, host };
}

test('classifyStatus: 2xx ok, 4xx poison except 408/429, the rest retry', () => {
  assert.equal(classifyStatus(200), 'ok');
  assert.equal(classifyStatus(204), 'ok');
  for (const s of [400, 401, 403, 404, 413, 422]) assert.equal(classifyStatus(s), 'poison', String(s));
  for (const s of [408, 429, 500, 502, 503, 504, 301, 0]) assert.equal(classifyStatus(s), 'retry', String(s));
});

test('backoff: 0.5 s doubling to a 30 s cap, jitter within ±20 %', () => {
  const mid = (a) => backoffDelay(a, { baseMs: 500, maxMs: 30_000, random: () => 0.5 });
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7, 40].map(mid), [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  assert.equal(backoffDelay(0, { baseMs: 500, maxMs: 30_000, random: () => 0 }), 400);
  assert.equal(backoffDelay(1, { baseMs: 500, maxMs: 30_000, random: () => 0.999999 }), 1200);
  assert.equal(backoffDelay(9, { baseMs: 500, maxMs: 30_000, random: () => 0.999999 }), 30000, 'jitter never exceeds the cap');
  assert.equal(backoffDelay(3, { baseMs: 1000, maxMs: 60_000, random: () => 0.5 }), 8000);
});

test('503 twice then 200: delivered exactly once, in order, with JSON and the secret header', async (t) => {
  const fake = await startFakeHost(t, { script: [503, 503] });
  const queue = DurableQueue.open(`${tmpDir(t)}/q.jsonl`);
  t.after(() => queue.close());
  queue.enqueue(payload(1));
  queue.enqueue(payload(2));
  const { d, delays, stats } = makeDeliverer(t, queue, fake.url);
  d.start();
  await fake.waitFor((r) => r.length === 4);
  assert.deepEqual(fake.requests.map((r) => [r.body.id, r.status]), [['MSG1', 503], ['MSG1', 503], ['MSG1', 200], ['MSG2', 200]]);
  for (const r of fake.requests) {
    assert.equal(r.method, 'POST');
    assert.equal(r.path, INBOUND_PATH);
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(r.headers['x-callengine-secret'], SECRET);
  }
  assert.deepEqual(fake.requests[2].body, payload(1), 'payload arrives unchanged');
  assert.deepEqual(delays, [500, 1000], 'exponential backoff between the retries');
  await waitUntil(() => queue.size === 0);
  assert.deepEqual([stats.delivered, stats.retries, stats.poison], [2, 2, 0]);
  // Keep-alive: all four requests used one TCP connection.
  assert.equal(new Set(fake.requests.map((r) => r.port)).size, 1);
});

test('a 400 is poison: dropped after one try, the next item still goes', async (t) => {
  const fake = await startFakeHost(t, { script: [400] });
  const queue = DurableQueue.open(`${tmpDir(t)}/q.jsonl`);
  t.after(() => queue.close());
  queue.enqueue(payload(1));
  queue.enqueue(payload(2));
  const { d, delays, stats } = makeDeliverer(t, queue, fake.url);
  d.start();
  await fake.waitFor((r) => r.length === 2);
  await waitUntil(() => queue.size === 0);
  assert.deepEqual(fake.requests.map((r) => [r.body.id, r.status]), [['MSG1', 400], ['MSG2', 200]]);
  assert.deepEqual(delays, []);
  assert.deepEqual([stats.delivered, stats.poison], [1, 1]);
});

test('408 and 429 are retried, not dropped; Retry-After is honoured', async (t) => {
  const fake = await startFakeHost(t, { script: [408, 429] });
  fake.server.prependListener('request', (req, res) => {
    if (fake.requests.length === 1) res.setHeader('Retry-After', '3'); // the 429
  });
  const queue = DurableQueue.open(`${tmpDir(t)}/q.jsonl`);
  t.after(() => queue.close());
  queue.enqueue(payload(1));
  const { d, delays } = makeDeliverer(t, queue, fake.url);
  d.start();
  await fake.waitFor((r) => r.length === 3);
  await waitUntil(() => queue.size === 0);
  assert.deepEqual(fake.requests.map((r) => r.status), [408, 429, 200]);
  assert.deepEqual(delays, [500, 3000]);
});

test('a host that does not answer in time is retried (timeout), then the item is delivered once', async (t) => {
  let hung = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    if (hung === 0) { hung += 1; return; } // never answer the first request
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => { server.got.push(JSON.parse(Buffer.concat(chunks))); res.end('{}'); });
  });
  server.got = [];
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => { server.closeAllConnections(); server.close(); });
  const queue = DurableQueue.open(`${tmpDir(t)}/q.jsonl`);
  t.after(() => queue.close());
  queue.enqueue(payload(1));
  const { d, stats } = makeDeliverer(t, queue, `http://127.0.0.1:${server.address().port}`, { hostOpts: { timeoutMs: 150 } });
  d.start();
  await waitUntil(() => queue.size === 0);
  assert.equal(server.got.length, 1);
  assert.equal(stats.retries, 1);
  assert.match(stats.lastError, /within 150 ms/);
});

test('connection refused is retried until the host comes up', async (t) => {
  // Reserve a port, close it, point the deliverer at it, then start the host there.
  const probe = http.createServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const { port } = probe.address();
  await new Promise((r) => probe.close(r));
  const queue = DurableQueue.open(`${tmpDir(t)}/q.jsonl`);
  t.after(() => queue.close());
  queue.enqueue(payload(1));
  let started;
  const got = [];
  const { d, stats } = makeDeliverer(t, queue, `http://127.0.0.1:${port}`, {
    deliverer: {
      sleep: async () => {
        if (stats.retries === 2 && !started) {
          started = http.createServer((req, res) => { req.resume(); req.on('end', () => { got.push(req.url); res.end(); }); });
          started.listen(port, '127.0.0.1');
          await once(started, 'listening');
          t.after(() => { started.closeAllConnections(); started.close(); });
        }
      },
    },
  });
  d.start();
  await waitUntil(() => queue.size === 0);
  assert.equal(stats.retries, 2);
  assert.match(stats.lastError, /ECONNREFUSED/);
  assert.deepEqual(got, [INBOUND_PATH]);
});

test('after a restart pending items go first, in order; nothing acked is sent twice', async (t) => {
  const file = `${tmpDir(t)}/q.jsonl`;
  // Run 1: host takes MSG1 and MSG2, then fails on MSG3 until we "crash".
  const fake1 = await startFakeHost(t, { script: [200, 200, 503, 503, 503, 503, 503, 503] });
  const q1 = DurableQueue.open(file);
  for (let n = 1; n <= 4; n += 1) q1.enqueue(payload(n));
  const run1 = makeDeliverer(t, q1, fake1.url);
  run1.d.start();
  await fake1.waitFor((r) => r.length >= 4);
  await run1.d.stop();
  q1.close();
  assert.deepEqual(fake1.requests.slice(0, 3).map((r) => r.body.id), ['MSG1', 'MSG2', 'MSG3']);

  // Run 2: a new queue instance on the same file, a new message arrives right away.
  const fake2 = await startFakeHost(t);
  const q2 = DurableQueue.open(file);
  t.after(() => q2.close());
  q2.enqueue(payload(5));
  const run2 = makeDeliverer(t, q2, fake2.url);
  run2.d.start();
  await fake2.waitFor((r) => r.length === 3);
  await waitUntil(() => q2.size === 0);
  assert.deepEqual(fake2.requests.map((r) => r.body.id), ['MSG3', 'MSG4', 'MSG5']);
  const everDelivered = [...fake1.requests, ...fake2.requests].filter((r) => r.status === 200).map((r) => r.body.id);
  assert.deepEqual(everDelivered, ['MSG1', 'MSG2', 'MSG3', 'MSG4', 'MSG5'], 'each exactly once');
});

test('stop() aborts a backoff sleep promptly and leaves the item queued', async (t) => {
  const fake = await startFakeHost(t, { script: [503] });
  const queue = DurableQueue.open(`${tmpDir(t)}/q.jsonl`);
  t.after(() => queue.close());
  queue.enqueue(payload(1));
  const host = new HostClient({ baseUrl: fake.url, secret: SECRET });
  t.after(() => host.close());
  const d = new Deliverer({ queue, host, baseDelayMs: 60_000, maxDelayMs: 60_000 }); // real sleep, 60 s
  d.start();
  await fake.waitFor((r) => r.length === 1);
  const t0 = Date.now();
  await d.stop();
  assert.ok(Date.now() - t0 < 1000, 'stop must not wait for the backoff');
  assert.equal(queue.size, 1);
});

async function waitUntil(pred, ms = 5000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
