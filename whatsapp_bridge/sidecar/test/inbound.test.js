import assert from 'node:assert/strict';
import test from 'node:test';
import { InboundStats, createUpsertHandler, extractText, mapMessage, toUnixSeconds } from '../src/inbound.js';
import { DurableQueue } from '../src/queue.js';
import { tmpDir } from './support.js';

const ME = '972500000000@s.whatsapp.net';
const PEER = '972541234567@s.whatsapp.net';
const NOW = () => 1_800_000_000_000;

function msg(message, key = {}, extra = {}) {
  return { key: { remoteJid: PEER, fromMe: false, id: 'ABC123', ...key }, message, pushName: 'Dana', messageTimestamp: 1_700_000_123, ...extra };
}

test('plain conversation text maps to the exact host payload', () => {
  const r = mapMessage(msg({ conversation: 'שלום, אפשר לקבוע תור?' }), ME, NOW);
  assert.deepEqual(r, {
    payload: { id: 'ABC123', chat: PEER, from: PEER, push_name: 'Dana', text: 'שלום, אפשר לקבוע תור?', timestamp: 1_700_000_123, to: ME },
  });
  assert.deepEqual(Object.keys(r.payload), ['id', 'chat', 'from', 'push_name', 'text', 'timestamp', 'to']);
});

test('extended text, image and video captions, and wrapped (ephemeral / view-once) texts', () => {
  assert.equal(extractText({ extendedTextMessage: { text: 'see https://x.y' } }), 'see https://x.y');
  assert.equal(extractText({ imageMessage: { caption: 'photo caption', mimetype: 'image/jpeg' } }), 'photo caption');
  assert.equal(extractText({ videoMessage: { caption: 'video caption' } }), 'video caption');
  assert.equal(extractText({ ephemeralMessage: { message: { extendedTextMessage: { text: 'disappearing' } } } }), 'disappearing');
  assert.equal(extractText({ viewOnceMessageV2: { message: { imageMessage: { caption: 'once' } } } }), 'once');
  assert.equal(extractText({ imageMessage: { mimetype: 'image/jpeg' } }), undefined);
  assert.equal(extractText({ stickerMessage: {} }), undefined);
  assert.equal(extractText(null), undefined);
});

test('participant wins over remoteJid for "from"; missing pushName becomes ""', () => {
  const lidChat = '123456789@lid';
  const r = mapMessage(msg({ conversation: 'hi' }, { remoteJid: lidChat, participant: '972541111111@s.whatsapp.net' }, { pushName: undefined }), ME, NOW);
  assert.equal(r.payload.chat, lidChat);
  assert.equal(r.payload.from, '972541111111@s.whatsapp.net');
  assert.equal(r.payload.push_name, '');
});

test('skips fromMe, groups, status, broadcasts, non-text, empty text and keyless messages', () => {
  assert.deepEqual(mapMessage(msg({ conversation: 'x' }, { fromMe: true }), ME), { skip: 'from_me' });
  assert.deepEqual(mapMessage(msg({ conversation: 'x' }, { remoteJid: '120363@g.us', participant: PEER }), ME), { skip: 'group' });
  assert.deepEqual(mapMessage(msg({ conversation: 'x' }, { remoteJid: 'status@broadcast' }), ME), { skip: 'status' });
  assert.deepEqual(mapMessage(msg({ conversation: 'x' }, { remoteJid: '1234@newsletter' }), ME), { skip: 'broadcast' });
  assert.deepEqual(mapMessage(msg({ reactionMessage: { text: '👍' } }), ME), { skip: 'not_text' });
  assert.deepEqual(mapMessage(msg(undefined), ME), { skip: 'not_text' });
  assert.deepEqual(mapMessage(msg({ conversation: '  \n ' }), ME), { skip: 'empty' });
  assert.deepEqual(mapMessage(msg({ conversation: '' }), ME), { skip: 'empty' });
  assert.deepEqual(mapMessage({ message: { conversation: 'x' } }, ME), { skip: 'no_key' });
  assert.deepEqual(mapMessage(msg({ conversation: 'x' }, { id: '' }), ME), { skip: 'no_key' });
});

test('timestamp from number, Long, Long-like object, string, bigint; fallback to now', () => {
  const longLike = { low: 1_700_000_123, high: 0, unsigned: true };
  const withToNumber = { low: 5, high: 0, toNumber: () => 1_700_000_999 };
  assert.equal(toUnixSeconds(1_700_000_123), 1_700_000_123);
  assert.equal(toUnixSeconds(1_700_000_123.9), 1_700_000_123);
  assert.equal(toUnixSeconds(longLike), 1_700_000_123);
  assert.equal(toUnixSeconds({ low: 0, high: 1 }), 2 ** 32);
  assert.equal(toUnixSeconds({ low: -1, high: 0 }), 2 ** 32 - 1); // low bits are unsigned
  assert.equal(toUnixSeconds(withToNumber), 1_700_000_999);
  assert.equal(toUnixSeconds('1700000123'), 1_700_000_123);
  assert.equal(toUnixSeconds(1_700_000_123n), 1_700_000_123);
  for (const bad of [undefined, null, 'yesterday', 0, -5, NaN, {}]) assert.equal(toUnixSeconds(bad, NOW), 1_800_000_000, String(bad));
  assert.equal(mapMessage(msg({ conversation: 'x' }, {}, { messageTimestamp: longLike }), ME).payload.timestamp, 1_700_000_123);
  assert.equal(mapMessage(msg({ conversation: 'x' }, {}, { messageTimestamp: '1700000124' }), ME).payload.timestamp, 1_700_000_124);
});

test('upsert handler is synchronous, enqueues notify texts durably in order and counts skips', (t) => {
  const dir = tmpDir(t);
  const queue = DurableQueue.open(`${dir}/q.jsonl`);
  t.after(() => queue.close());
  const stats = new InboundStats();
  const onUpsert = createUpsertHandler({ queue, ownJid: () => ME, stats });
  const ret = onUpsert({
    type: 'notify',
    messages: [
      msg({ conversation: 'first' }, { id: 'A' }),
      msg({ conversation: 'mine' }, { id: 'B', fromMe: true }),
      msg({ conversation: 'group' }, { id: 'C', remoteJid: '1@g.us' }),
      msg({ imageMessage: { caption: 'second' } }, { id: 'D' }),
      msg({ conversation: ' ' }, { id: 'E' }),
      msg({ conversation: 'status' }, { id: 'F', remoteJid: 'status@broadcast' }),
    ],
  });
  assert.equal(ret, undefined, 'must not return a promise');
  onUpsert({ type: 'append', messages: [msg({ conversation: 'history' }, { id: 'G' })] });
  assert.deepEqual([queue.peek().payload.id, queue.size], ['A', 2]);
  assert.equal(stats.received, 7);
  assert.equal(stats.enqueued, 2);
  assert.equal(stats.skipped.from_me, 1);
  assert.equal(stats.skipped.group, 1);
  assert.equal(stats.skipped.empty, 1);
  assert.equal(stats.skipped.status, 1);
  assert.equal(stats.skipped.not_notify, 1);
  // Durable before return: a second instance on the same file sees both, in order.
  queue.close();
  const reopened = DurableQueue.open(`${dir}/q.jsonl`);
  t.after(() => reopened.close());
  assert.deepEqual(reopened.items.map((i) => i.payload.text), ['first', 'second']);
  assert.equal(reopened.items[0].payload.to, ME);
});

test('malformed upserts do not crash the handler', (t) => {
  const queue = DurableQueue.open(`${tmpDir(t)}/q.jsonl`);
  t.after(() => queue.close());
  const onUpsert = createUpsertHandler({ queue, ownJid: () => '' });
  onUpsert(undefined);
  onUpsert({ type: 'notify' });
  onUpsert({ type: 'notify', messages: [null, {}, { key: null }] });
  assert.equal(queue.size, 0);
});
