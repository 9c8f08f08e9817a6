// The whole sidecar (queue, delivery, inbound handler, API) with a fake WhatsApp transport and
// a real fake host on loopback.
import assert from 'node:assert/strict';
import test from 'node:test';
import { QR_PATH, startSidecar } from '../src/app.js';
import { DurableQueue } from '../src/queue.js';
import { payload, startFakeHost, tmpDir } from './support.js';

const SECRET = 'app-secret';
const PEER = '972541234567@s.whatsapp.net';

class FakeTransport {
  constructor(hooks) { this.hooks = hooks; this.connected = false; this.sent = []; this.stopped = false; }
  async start() { this.connected = true; }
  async stop() { this.stopped = true; this.connected = false; }
  isConnected() { return this.connected; }
  me() { return '972500000000@s.whatsapp.net'; }
  qrPending() { return false; }
  async sendText(jid, text) { this.sent.push([jid, text]); return { id: 'OUT1' }; }
  async sendTyping() {}
}

test('end to end: pending items first, then a live upsert reaches the host; API and QR post work', async (t) => {
  const fake = await startFakeHost(t);
  const dir = tmpDir(t);
  const queueFile = `${dir}/outbox.jsonl`;
  const old = DurableQueue.open(queueFile); // left over from a previous run
  old.enqueue(payload(1));
  old.close();

  let transport;
  const app = await startSidecar({
    config: { hostUrl: fake.url, secret: SECRET, port: 0, authDir: `${dir}/auth`, queueFile },
    makeTransport: (hooks) => { transport = new FakeTransport(hooks); return transport; },
    delivery: { baseDelayMs: 1, maxDelayMs: 5 },
  });
  t.after(() => app.stop());

  transport.hooks.onUpsert({
    type: 'notify',
    messages: [{ key: { remoteJid: PEER, fromMe: false, id: 'LIVE1' }, message: { conversation: 'מה שעות הפתיחה?' }, pushName: 'Noa', messageTimestamp: 1_700_000_500 }],
  });
  transport.hooks.onQr('2@PAIRME');
  await fake.waitFor((r) => r.length === 3);

  const inbound = fake.requests.filter((r) => r.path === '/whatsapp/baileys');
  assert.deepEqual(inbound.map((r) => r.body.id), ['MSG1', 'LIVE1']);
  assert.deepEqual(inbound[1].body, {
    id: 'LIVE1', chat: PEER, from: PEER, push_name: 'Noa', text: 'מה שעות הפתיחה?', timestamp: 1_700_000_500, to: '972500000000@s.whatsapp.net',
  });
  const qr = fake.requests.find((r) => r.path === QR_PATH);
  assert.deepEqual(qr.body, { qr: '2@PAIRME' });
  for (const r of fake.requests) assert.equal(r.headers['x-callengine-secret'], SECRET);

  const base = `http://127.0.0.1:${app.port}`;
  const headers = { 'X-Callengine-Secret': SECRET, 'Content-Type': 'application/json' };
  const health = await (await fetch(`${base}/health`, { headers })).json();
  assert.deepEqual(health, { connected: true, me: '972500000000@s.whatsapp.net', queue: 0, qr: false });
  const sent = await fetch(`${base}/send`, { method: 'POST', headers, body: JSON.stringify({ to: '+972 54-123-4567', text: 'פתוח עד 19:00' }) });
  assert.deepEqual(await sent.json(), { id: 'OUT1' });
  assert.deepEqual(transport.sent, [[PEER, 'פתוח עד 19:00']]);
  const metrics = await (await fetch(`${base}/metrics`, { headers })).json();
  assert.equal(metrics.inbound.enqueued, 1);
  assert.equal(metrics.delivery.delivered, 2);

  await app.stop();
  assert.equal(transport.stopped, true);
  await assert.rejects(fetch(`${base}/health`, { headers }), 'API closed after stop');
});
