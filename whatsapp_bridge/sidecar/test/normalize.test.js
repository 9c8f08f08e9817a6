import assert from 'node:assert/strict';
import test from 'node:test';
import { InvalidRecipientError, bareJid, normalizeRecipient } from '../src/normalize.js';

test('E.164 numbers with spaces, dashes, parentheses, 00 prefix become s.whatsapp.net JIDs', () => {
  assert.equal(normalizeRecipient('+972 54-123-4567'), '972541234567@s.whatsapp.net');
  assert.equal(normalizeRecipient('972541234567'), '972541234567@s.whatsapp.net');
  assert.equal(normalizeRecipient('00972 (54) 123.4567'), '972541234567@s.whatsapp.net');
  assert.equal(normalizeRecipient('\u200e+1 (415) 555-0100\u200f'), '14155550100@s.whatsapp.net');
});

test('JIDs pass through; c.us is rewritten; device suffix dropped', () => {
  assert.equal(normalizeRecipient('972541234567@s.whatsapp.net'), '972541234567@s.whatsapp.net');
  assert.equal(normalizeRecipient('972541234567@c.us'), '972541234567@s.whatsapp.net');
  assert.equal(normalizeRecipient('972541234567:7@s.whatsapp.net'), '972541234567@s.whatsapp.net');
  assert.equal(normalizeRecipient('123456789012345@lid'), '123456789012345@lid');
  assert.equal(normalizeRecipient('120363000000000000@g.us'), '120363000000000000@g.us');
});

test('bad recipients raise InvalidRecipientError naming "to"', () => {
  for (const bad of [undefined, 42, '', '   ', '054-123-4567', '+12', '+972 54 abc', 'x@example.com', '@s.whatsapp.net', '+1234567890123456']) {
    assert.throws(() => normalizeRecipient(bad), (err) => err instanceof InvalidRecipientError && err.message.includes('"to"'), String(bad));
  }
});

test('bareJid strips the device suffix and tolerates missing input', () => {
  assert.equal(bareJid('972500000000:12@s.whatsapp.net'), '972500000000@s.whatsapp.net');
  assert.equal(bareJid('972500000000@s.whatsapp.net'), '972500000000@s.whatsapp.net');
  assert.equal(bareJid(undefined), '');
  assert.equal(bareJid('garbage'), '');
});
