import assert from 'node:assert/strict';
import { once } from 'node:events';
import test from 'node:test';
import { createApiServer, secretMatches } from '../src/api.js';
import crypto from 'node:crypto';

const SECRET = 'api-test-secret';

/** Records every call; behaviour switchable per test. */
class FakeTransport {
  constructor() {
    this.calls = [];
    this.connected = true;
    this.failSend = undefined;
  }
  isConnected() { return this.connected; }
  me() { return this.connected ? '972500000000@s.whatsapp.net' : ''; }
  qrPending() { return !this.connected; }
  async sendText(jid, text) {
    this.calls.push(['sendText', jid, text]);
    if (this.failSend) throw new Error(this.failSend);
    return { id: `3EB0${this.calls.length}` };
  }
  async sendTyping(jid, state) { this.calls.push(['sendTyping', jid, state]); }
}

async function startApi(t, { queueSize = () => 3 } = {}) {
  const transport = new FakeTransport();
  const server = createApiServer({ transport, secret: SECRET, queueSize, metrics: () => ({ inbound: { received: 1 } }) });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => { server.closeAllConnections(); server.close(); });
  const base = `http://127.0.0.1:${server.address().port}`;
  const call = async (method, path, body, headers = { 'X-Callengine-Secret': SECRET }) => {
    const res = await fetch(base + path, {
      method,
      headers: { 'Content-Type': 'application/json', ...headers },
      body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
    });
    return { status: res.status, type: res.headers.get('content-type'), json: await res.json() };
  };
  return { transport, call };
}

test('every route rejects a missing or wrong secret with 401 and never reaches the transport', async (t) => {
  const { transport, call } = await startApi(t);
  for (const headers of [{}, { 'X-Callengine-Secret': 'wrong' }, { 'X-Callengine-Secret': `${SECRET}x` }, { 'X-Callengine-Secret': '' }]) {
    for (const [m, p, b] of [['POST', '/send', { to: '+972541234567', text: 'hi' }], ['POST', '/typing', { to: '+972541234567', state: 'composing' }], ['GET', '/health'], ['GET', '/nope']]) {
      const r = await call(m, p, b, headers);
      assert.equal(r.status, 401, `${m} ${p} ${JSON.stringify(headers)}`);
      assert.match(r.json.error, /X-Callengine-Secret/);
    }
  }
  assert.deepEqual(transport.calls, []);
});

test('secretMatches is exact and handles odd inputs', () => {
  const d = crypto.createHash('sha256').update(SECRET).digest();
  assert.equal(secretMatches(SECRET, d), true);
  assert.equal(secretMatches(SECRET.slice(0, -1), d), false);
  assert.equal(secretMatches(undefined, d), false);
  assert.equal(secretMatches([SECRET], d), false);
});

test('POST /send normalises the number, calls the transport, returns the message id', async (t) => {
  const { transport, call } = await startApi(t);
  const r = await call('POST', '/send', { to: '+972 54-123-4567', text: 'שלום! התור נקבע ליום ג׳' });
  assert.equal(r.status, 200);
  assert.equal(r.type, 'application/json');
  assert.deepEqual(r.json, { id: '3EB01' });
  assert.deepEqual(transport.calls, [['sendText', '972541234567@s.whatsapp.net', 'שלום! התור נקבע ליום ג׳']]);
  const r2 = await call('POST', '/send', { to: '123456789@lid', text: 'x' });
  assert.equal(r2.status, 200);
  assert.equal(transport.calls[1][1], '123456789@lid');
});

test('POST /typing maps to a presence update', async (t) => {
  const { transport, call } = await startApi(t);
  assert.deepEqual(await call('POST', '/typing', { to: '972541234567@s.whatsapp.net', state: 'composing' }), { status: 200, type: 'application/json', json: { ok: true } });
  assert.equal((await call('POST', '/typing', { to: '+972541234567', state: 'paused' })).status, 200);
  assert.deepEqual(transport.calls, [
    ['sendTyping', '972541234567@s.whatsapp.net', 'composing'],
    ['sendTyping', '972541234567@s.whatsapp.net', 'paused'],
  ]);
});

test('bad bodies get 400 with a message naming the field; the transport is not called', async (t) => {
  const { transport, call } = await startApi(t);
  const cases = [
    ['/send', 'not json', /JSON object/],
    ['/send', [1, 2], /JSON object/],
    ['/send', 'null', /JSON object/],
    ['/send', { text: 'hi' }, /"to"/],
    ['/send', { to: 972541234567, text: 'hi' }, /"to"/],
    ['/send', { to: '054-123-4567', text: 'hi' }, /"to".*international/],
    ['/send', { to: 'someone@example.com', text: 'hi' }, /"to"/],
    ['/send', { to: '+972541234567' }, /"text"/],
    ['/send', { to: '+972541234567', text: '   ' }, /"text"/],
    ['/send', { to: '+972541234567', text: 5 }, /"text"/],
    ['/send', { to: '+972541234567', text: 'x'.repeat(65_537) }, /"text" longer/],
    ['/typing', { to: '+972541234567' }, /"state"/],
    ['/typing', { to: '+972541234567', state: 'recording' }, /"state"/],
    ['/typing', { state: 'paused' }, /"to"/],
  ];
  for (const [path, body, re] of cases) {
    const r = await call('POST', path, body);
    assert.equal(r.status, 400, `${path} ${JSON.stringify(body).slice(0, 60)}`);
    assert.match(r.json.error, re);
  }
  assert.deepEqual(transport.calls, []);
});

test('GET /health reports connection, own JID, queue depth and pending QR', async (t) => {
  let pending = 3;
  const { transport, call } = await startApi(t, { queueSize: () => pending });
  assert.deepEqual((await call('GET', '/health')).json, { connected: true, me: '972500000000@s.whatsapp.net', queue: 3, qr: false });
  transport.connected = false;
  pending = 0;
  assert.deepEqual((await call('GET', '/health')).json, { connected: false, me: '', queue: 0, qr: true });
  assert.deepEqual((await call('GET', '/metrics')).json, { inbound: { received: 1 } });
});

test('not connected -> 503; WhatsApp failure -> 502; unknown route 404, wrong method 405; huge body 413', async (t) => {
  const { transport, call } = await startApi(t);
  transport.connected = false;
  const r = await call('POST', '/send', { to: '+972541234567', text: 'hi' });
  assert.deepEqual([r.status, r.json.error], [503, 'whatsapp not connected']);
  assert.equal((await call('POST', '/typing', { to: '+972541234567', state: 'paused' })).status, 503);
  transport.connected = true;
  transport.failSend = 'not-acceptable';
  const f = await call('POST', '/send', { to: '+972541234567', text: 'hi' });
  assert.equal(f.status, 502);
  assert.match(f.json.error, /not-acceptable/);
  assert.equal((await call('GET', '/whatever')).status, 404);
  assert.equal((await call('GET', '/send')).status, 405);
  const big = await call('POST', '/send', { to: '+972541234567', text: 'x'.repeat(300 * 1024) });
  assert.equal(big.status, 413);
});

test('createApiServer refuses an empty secret', () => {
  assert.throws(() => createApiServer({ transport: new FakeTransport(), secret: '', queueSize: () => 0 }), /secret/);
});
