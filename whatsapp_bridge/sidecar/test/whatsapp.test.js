// The Baileys layer, driven through a fake socket (Baileys' `makeWASocket` is injectable):
// real `useMultiFileAuthState` on a temp dir, no WhatsApp network.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import fs from 'node:fs';
import test from 'node:test';
import { planReconnect } from '../src/reconnect.js';
import { BaileysTransport } from '../src/whatsapp.js';
import { tmpDir } from './support.js';

function fakeSocketFactory() {
  const sockets = [];
  const make = (config) => {
    const sock = {
      config,
      ev: new EventEmitter(),
      user: undefined,
      sent: [],
      ended: false,
      async sendMessage(jid, content) { this.sent.push(['message', jid, content]); return { key: { id: `3EB0${this.sent.length}` } }; },
      async sendPresenceUpdate(state, jid) { this.sent.push(['presence', state, jid]); },
      async end() { this.ended = true; },
    };
    sockets.push(sock);
    return sock;
  };
  return { make, sockets };
}

async function waitUntil(pred, ms = 3000) {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('planReconnect: logged out resets auth now, restartRequired reconnects now, others back off 1 s..60 s', () => {
  const r = () => 0.5;
  assert.deepEqual(planReconnect(401, 5, { random: r }), { delayMs: 0, resetAuth: true, countsAsFailure: false });
  assert.deepEqual(planReconnect(515, 5, { random: r }), { delayMs: 0, resetAuth: false, countsAsFailure: false });
  assert.deepEqual([0, 1, 2, 5, 6, 20].map((a) => planReconnect(428, a, { random: r }).delayMs), [1000, 2000, 4000, 32000, 60000, 60000]);
  assert.equal(planReconnect(undefined, 0, { random: r }).delayMs, 1000);
  const jittered = planReconnect(408, 0, { random: () => 0 }).delayMs;
  assert.ok(jittered >= 800 && jittered < 1000, String(jittered));
});

test('socket gets the fast settings; QR, open, upsert, send, typing and reconnects are handled', async (t) => {
  const authDir = `${tmpDir(t)}/auth`;
  const { make, sockets } = fakeSocketFactory();
  const qrs = [];
  const upserts = [];
  const wa = new BaileysTransport({
    authDir, onUpsert: (u) => upserts.push(u), onQr: (q) => qrs.push(q), printQr: false,
    reconnect: { baseMs: 1, maxMs: 4 }, makeSocket: make,
  });
  t.after(() => wa.stop());
  await wa.start();
  assert.equal(sockets.length, 1);
  const cfg = sockets[0].config;
  assert.equal(cfg.markOnlineOnConnect, false);
  assert.equal(cfg.syncFullHistory, false);
  assert.equal(cfg.connectTimeoutMs, 7000);
  assert.equal(await cfg.getMessage({ id: 'x' }), undefined);
  assert.ok(cfg.auth.creds.noiseKey, 'real multi-file auth state was loaded');
  assert.ok(fs.existsSync(authDir));

  const s1 = sockets[0];
  s1.ev.emit('connection.update', { qr: '2@QRDATA' });
  assert.deepEqual(qrs, ['2@QRDATA']);
  assert.equal(wa.qrPending(), true);
  assert.equal(wa.isConnected(), false);
  await assert.rejects(wa.sendText('1@s.whatsapp.net', 'x'), /not connected/);

  s1.user = { id: '972500000000:4@s.whatsapp.net' };
  s1.ev.emit('connection.update', { connection: 'open' });
  assert.equal(wa.isConnected(), true);
  assert.equal(wa.qrPending(), false);
  assert.equal(wa.me(), '972500000000@s.whatsapp.net');

  s1.ev.emit('messages.upsert', { type: 'notify', messages: [] });
  assert.equal(upserts.length, 1);

  assert.deepEqual(await wa.sendText('972541234567@s.whatsapp.net', 'שלום'), { id: '3EB01' });
  await wa.sendTyping('972541234567@s.whatsapp.net', 'composing');
  assert.deepEqual(s1.sent, [
    ['message', '972541234567@s.whatsapp.net', { text: 'שלום' }],
    ['presence', 'composing', '972541234567@s.whatsapp.net'],
  ]);

  // Connection lost: reconnect after backoff with a new socket; the old one is ignored from now on.
  s1.ev.emit('connection.update', { connection: 'close', lastDisconnect: { error: Object.assign(new Error('lost'), { output: { statusCode: 428 } }) } });
  assert.equal(wa.isConnected(), false);
  await waitUntil(() => sockets.length === 2);
  s1.ev.emit('connection.update', { connection: 'open' });
  assert.equal(wa.isConnected(), false, 'a replaced socket cannot mark us connected');

  // Logged out: auth is cleared and a fresh socket (fresh pairing) follows.
  fs.writeFileSync(`${authDir}/marker.json`, '{}');
  sockets[1].ev.emit('connection.update', { connection: 'close', lastDisconnect: { error: Object.assign(new Error('logged out'), { output: { statusCode: 401 } }) } });
  await waitUntil(() => sockets.length === 3);
  assert.equal(fs.existsSync(`${authDir}/marker.json`), false, 'auth dir was cleared');
  assert.equal(sockets[2].config.auth.creds.registered, false);

  await wa.stop();
  assert.equal(sockets[2].ended, true);
  sockets[2].ev.emit('connection.update', { connection: 'close', lastDisconnect: { error: new Error('closed') } });
  assert.equal(wa.timer, undefined, 'no reconnect scheduled after stop()');
  assert.equal(sockets.length, 3);
});
