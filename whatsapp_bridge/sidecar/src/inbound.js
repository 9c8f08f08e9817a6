// Inbound WhatsApp messages -> host payloads.
//
// Baileys emits `messages.upsert` from its socket's event buffer; anything slow inside the
// listener (an HTTP round trip to the host, say) holds up the processing of every later frame on
// that socket, including acks and receipts. So the listener does only pure mapping plus one
// synchronous, fsynced append to the durable queue (`queue.js`) and returns; delivery to the host
// happens in `delivery.js`, on its own schedule. This module imports no Baileys and no I/O: the
// mapping is a pure function over the WAMessage shape, so it is tested with plain objects.
//
// Skipped (and counted, never logged per message): our own messages (`fromMe`), non-`notify`
// upserts (history `append`), groups (`@g.us`), status updates (`status@broadcast`), other
// broadcast lists and newsletters, messages without text (stickers, reactions, receipts, edits,
// protocol messages) and texts that are blank.

/**
 * Exact shape POSTed to `{HOST_URL}/whatsapp/baileys`.
 *
 * @typedef {object} HostPayload
 * @property {string} id        message key id (WhatsApp's id; the host dedupes on it)
 * @property {string} chat      remoteJid of the chat
 * @property {string} from      participant, or remoteJid for 1:1 chats
 * @property {string} push_name sender's display name, or ''
 * @property {string} text
 * @property {number} timestamp unix seconds (integer)
 * @property {string} to        our own JID, device suffix removed ('' if not yet known)
 */

/** Reasons a message is not forwarded; keys of `InboundStats.skipped`. */
export const SKIP_REASONS = Object.freeze([
  'not_notify', 'from_me', 'group', 'status', 'broadcast', 'no_key', 'not_text', 'empty',
]);

// Containers that wrap the real content (disappearing messages, view-once, ...).
const WRAPPERS = ['ephemeralMessage', 'viewOnceMessage', 'viewOnceMessageV2', 'viewOnceMessageV2Extension'];

function unwrap(message) {
  let m = message;
  for (let depth = 0; depth < 4 && m && typeof m === 'object'; depth += 1) {
    const key = WRAPPERS.find((k) => m[k] && typeof m[k] === 'object' && m[k].message);
    if (!key) break;
    m = m[key].message;
  }
  return m;
}

/**
 * The user-visible text of a WAMessage content, or `undefined` when it carries none.
 * Handles `conversation`, `extendedTextMessage.text` and image/video captions, looking through
 * ephemeral/view-once wrappers.
 *
 * @param {object | null | undefined} message `WAMessage.message`
 * @returns {string | undefined}
 */
export function extractText(message) {
  const m = unwrap(message);
  if (!m || typeof m !== 'object') return undefined;
  const candidates = [
    m.conversation,
    m.extendedTextMessage?.text,
    m.imageMessage?.caption,
    m.videoMessage?.caption,
  ];
  return candidates.find((t) => typeof t === 'string');
}

/**
 * `messageTimestamp` as integer unix seconds. Baileys gives a number, a protobufjs `Long`
 * (`{low, high, unsigned}` with `toNumber()`), sometimes a numeric string or a bigint.
 *
 * @param {unknown} value
 * @param {() => number} [nowMs] clock used when the value is missing or unusable
 * @returns {number}
 */
export function toUnixSeconds(value, nowMs = Date.now) {
  let n;
  if (typeof value === 'number') n = value;
  else if (typeof value === 'bigint') n = Number(value);
  else if (typeof value === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(value)) n = Number(value);
  else if (value && typeof value === 'object') {
    if (typeof value.toNumber === 'function') n = value.toNumber();
    else if (typeof value.low === 'number' && typeof value.high === 'number') {
      n = value.high * 2 ** 32 + (value.low >>> 0);
    }
  }
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) return Math.floor(nowMs() / 1000);
  return Math.floor(n);
}

/**
 * Map one WAMessage to the host payload, or say why it is skipped. Pure.
 *
 * @param {object} msg       a WAMessage from `messages.upsert`
 * @param {string} ownJid    our JID without device suffix ('' if unknown)
 * @param {() => number} [nowMs]
 * @returns {{payload: HostPayload} | {skip: string}}
 */
export function mapMessage(msg, ownJid, nowMs = Date.now) {
  const key = msg?.key;
  if (!key || typeof key.id !== 'string' || key.id === '' || typeof key.remoteJid !== 'string') {
    return { skip: 'no_key' };
  }
  if (key.fromMe) return { skip: 'from_me' };
  const chat = key.remoteJid;
  if (chat.endsWith('@g.us')) return { skip: 'group' };
  if (chat === 'status@broadcast') return { skip: 'status' };
  if (chat.endsWith('@broadcast') || chat.endsWith('@newsletter')) return { skip: 'broadcast' };
  const text = extractText(msg.message);
  if (text === undefined) return { skip: 'not_text' };
  if (text.trim() === '') return { skip: 'empty' };
  return {
    payload: {
      id: key.id,
      chat,
      from: typeof key.participant === 'string' && key.participant !== '' ? key.participant : chat,
      push_name: typeof msg.pushName === 'string' ? msg.pushName : '',
      text,
      timestamp: toUnixSeconds(msg.messageTimestamp, nowMs),
      to: ownJid || '',
    },
  };
}

/** Counters of the inbound side; read by `/metrics`. */
export class InboundStats {
  constructor() {
    this.received = 0;
    this.enqueued = 0;
    this.skipped = Object.fromEntries(SKIP_REASONS.map((r) => [r, 0]));
  }
}

/**
 * Build the `messages.upsert` listener.
 *
 * Runs on the Node event loop, inside Baileys' event emission. Guarantees: it never awaits and
 * never returns a promise; every forwarded message is fsynced to the queue before the listener
 * returns (so once Baileys acks the message to WhatsApp, we hold it on disk); messages of one
 * upsert are enqueued in the order Baileys gave them. A failure to enqueue (disk full) is thrown
 * to Baileys' emitter, which logs it; it is not swallowed here.
 *
 * @param {object} deps
 * @param {{enqueue(payload: HostPayload): number}} deps.queue
 * @param {() => string} deps.ownJid  our bare JID at call time
 * @param {InboundStats} [deps.stats]
 * @param {() => number} [deps.nowMs]
 * @returns {(upsert: {messages: object[], type: string}) => void}
 */
export function createUpsertHandler({ queue, ownJid, stats = new InboundStats(), nowMs = Date.now }) {
  return function onMessagesUpsert(upsert) {
    const messages = Array.isArray(upsert?.messages) ? upsert.messages : [];
    stats.received += messages.length;
    if (upsert?.type !== 'notify') {
      stats.skipped.not_notify += messages.length;
      return;
    }
    const me = ownJid();
    for (const msg of messages) {
      const result = mapMessage(msg, me, nowMs);
      if ('skip' in result) {
        stats.skipped[result.skip] += 1;
        continue;
      }
      queue.enqueue(result.payload);
      stats.enqueued += 1;
    }
  };
}
