// The Baileys connection: the only module that imports Baileys. Kept thin on purpose; the logic
// it would otherwise grow (message mapping, durable queue, retries, reconnect policy, the API) is
// in Baileys-free modules that are tested without the WhatsApp network.
//
// Ownership: a `BaileysTransport` owns at most one live socket at a time and the reconnect timer.
// A socket that has been replaced is ignored (its late events are dropped by the `sock !==
// this.sock` checks), so a slow close never tears down its successor.
//
// Settings follow the "fast" profile: no online presence on connect (the phone keeps getting
// notifications), no full history sync, no history fetch for retries (`getMessage` -> undefined),
// a 7 s connect timeout, Baileys logging at warn. Recent-history sync stays on: Baileys warns that
// disabling every sync type loses the initial LID mappings.
//
// Everything runs on the Node event loop. `messages.upsert` goes straight to the handler given by
// the owner, which must not await (see inbound.js).

import fs from 'node:fs';
import makeWASocket, { Browsers, makeCacheableSignalKeyStore, useMultiFileAuthState } from '@whiskeysockets/baileys';
import qrcodeTerminal from 'qrcode-terminal';
import { bareJid } from './normalize.js';
import { planReconnect } from './reconnect.js';
import { silentLogger } from './log.js';

export class BaileysTransport {
  /**
   * @param {object} opts
   * @param {string} opts.authDir   multi-file auth state (created; cleared when logged out)
   * @param {(upsert: object) => void} opts.onUpsert  synchronous `messages.upsert` listener
   * @param {(qr: string) => void} [opts.onQr]        called with each new pairing QR (must not throw)
   * @param {import('pino').Logger} [opts.logger]     our structured logger
   * @param {import('pino').Logger} [opts.baileysLogger] handed to Baileys (level warn)
   * @param {boolean} [opts.printQr=true]              draw the QR on stderr
   * @param {{baseMs?: number, maxMs?: number}} [opts.reconnect] backoff (default 1 s to 60 s)
   * @param {typeof makeWASocket} [opts.makeSocket]   Baileys' factory; tests pass a fake socket
   */
  constructor({
    authDir, onUpsert, onQr = () => {}, logger = silentLogger, baileysLogger, printQr = true,
    reconnect = {}, makeSocket = makeWASocket,
  }) {
    this.authDir = authDir;
    this.onUpsert = onUpsert;
    this.onQr = onQr;
    this.log = logger;
    this.baileysLogger = baileysLogger ?? logger.child({ component: 'baileys' }, { level: 'warn' });
    this.printQr = printQr;
    this.reconnect = reconnect;
    this.makeSocket = makeSocket;
    this.sock = undefined;
    this.connected = false;
    this.qr = false;
    this.failures = 0;
    this.timer = undefined;
    this.stopping = false;
  }

  /** Open the first connection. Resolves once the socket exists (not when it is open). */
  async start() {
    this.stopping = false;
    await this.#connect();
  }

  async #connect() {
    if (this.stopping) return;
    let sock;
    try {
      fs.mkdirSync(this.authDir, { recursive: true });
      const { state, saveCreds } = await useMultiFileAuthState(this.authDir);
      if (this.stopping) return;
      sock = this.makeSocket({
        auth: { creds: state.creds, keys: makeCacheableSignalKeyStore(state.keys, this.baileysLogger) },
        logger: this.baileysLogger,
        browser: Browsers.ubuntu('Chrome'),
        markOnlineOnConnect: false,
        syncFullHistory: false,
        getMessage: async () => undefined,
        connectTimeoutMs: 7000,
      });
      sock.ev.on('creds.update', saveCreds);
      sock.ev.on('messages.upsert', this.onUpsert);
      sock.ev.on('connection.update', (update) => this.#onConnectionUpdate(sock, update));
      this.sock = sock;
    } catch (err) {
      this.log.error({ err: err.message }, 'whatsapp socket could not be created');
      this.#schedule(planReconnect(undefined, this.failures++, this.reconnect));
    }
  }

  #onConnectionUpdate(sock, { connection, lastDisconnect, qr }) {
    if (sock !== this.sock) return;
    if (qr) {
      this.qr = true;
      this.log.info({ auth_dir: this.authDir }, 'whatsapp pairing: scan the QR code');
      if (this.printQr) qrcodeTerminal.generate(qr, { small: true }, (art) => process.stderr.write(`${art}\n`));
      this.onQr(qr);
    }
    if (connection === 'open') {
      this.connected = true;
      this.qr = false;
      this.failures = 0;
      this.log.info({ me: this.me() }, 'whatsapp connected');
    } else if (connection === 'close') {
      this.connected = false;
      this.qr = false;
      this.sock = undefined;
      if (this.stopping) return;
      const status = lastDisconnect?.error?.output?.statusCode;
      const plan = planReconnect(status, this.failures, this.reconnect);
      if (plan.countsAsFailure) this.failures += 1;
      this.log.warn({ status, err: lastDisconnect?.error?.message, retry_in_ms: plan.delayMs, reset_auth: plan.resetAuth },
        'whatsapp connection closed');
      if (plan.resetAuth) {
        fs.rmSync(this.authDir, { recursive: true, force: true });
        this.log.warn({ auth_dir: this.authDir }, 'whatsapp logged out; auth cleared, pairing again');
      }
      this.#schedule(plan);
    }
  }

  #schedule({ delayMs }) {
    if (this.stopping) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.#connect();
    }, delayMs);
  }

  /** Close the socket and cancel any reconnect. Idempotent. */
  async stop() {
    this.stopping = true;
    clearTimeout(this.timer);
    const sock = this.sock;
    this.sock = undefined;
    this.connected = false;
    if (sock) {
      try {
        await sock.end(undefined);
      } catch (err) {
        this.log.warn({ err: err.message }, 'whatsapp socket close failed');
      }
    }
  }

  isConnected() {
    return this.connected && this.sock !== undefined;
  }

  me() {
    return bareJid(this.sock?.user?.id);
  }

  qrPending() {
    return this.qr;
  }

  /** @returns {Promise<{id: string}>} */
  async sendText(jid, text) {
    const sock = this.sock;
    if (!sock || !this.connected) throw new Error('whatsapp not connected');
    const msg = await sock.sendMessage(jid, { text });
    return { id: msg?.key?.id ?? '' };
  }

  async sendTyping(jid, state) {
    const sock = this.sock;
    if (!sock || !this.connected) throw new Error('whatsapp not connected');
    await sock.sendPresenceUpdate(state, jid);
  }
}
