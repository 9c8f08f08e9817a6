// Delivery of the durable queue to the host: one loop, strictly in queue order, one item in
// flight at a time.
//
// Why one at a time: the host must see a chat's messages in order, and "strictly in order
// overall" gives that with no per-chat bookkeeping; the rate of inbound chat messages for one
// WhatsApp account is far below what one keep-alive connection carries. The price is head-of-line
// blocking: while the host answers 5xx for one item, later items (of every chat) wait.
//
// Verdicts per attempt:
//   2xx                     -> ack (item gone for good)
//   4xx except 408 and 429  -> poison: the host says the payload is bad and will say so again;
//                              ack it, log it at error and count it
//   408, 429, 5xx, other,
//   unreachable, timeout    -> retry the same item after backoff (0.5 s doubling to 30 s, ±20 %
//                              jitter; a 429's Retry-After is honoured up to the cap)
// Delivery is at-least-once: a crash between the host's 2xx and our ack redelivers the item, so
// the host dedupes on `id`.

import { abortableSleep, backoffDelay } from './backoff.js';
import { silentLogger } from './log.js';

export const INBOUND_PATH = '/whatsapp/baileys';

/** Counters of the delivery side; read by `/metrics`. */
export class DeliveryStats {
  constructor() {
    this.delivered = 0;
    this.poison = 0;
    this.retries = 0;
    this.lastError = '';
  }
}

/**
 * Classify one host answer. Pure.
 *
 * @param {number} status
 * @returns {'ok' | 'poison' | 'retry'}
 */
export function classifyStatus(status) {
  if (status >= 200 && status < 300) return 'ok';
  if (status >= 400 && status < 500 && status !== 408 && status !== 429) return 'poison';
  return 'retry';
}

function retryAfterMs(headers) {
  const v = headers?.['retry-after'];
  if (typeof v !== 'string') return 0;
  const secs = Number(v);
  if (Number.isFinite(secs) && secs >= 0) return secs * 1000;
  const when = Date.parse(v);
  return Number.isFinite(when) ? Math.max(0, when - Date.now()) : 0;
}

export class Deliverer {
  /**
   * @param {object} deps
   * @param {import('./queue.js').DurableQueue} deps.queue
   * @param {{postJson(path: string, body: unknown, opts?: {signal?: AbortSignal}): Promise<{status: number, headers?: object}>}} deps.host
   * @param {import('pino').Logger} [deps.logger]
   * @param {DeliveryStats} [deps.stats]
   * @param {number} [deps.baseDelayMs=500]
   * @param {number} [deps.maxDelayMs=30000]
   * @param {() => number} [deps.random]
   * @param {(ms: number, signal: AbortSignal) => Promise<void>} [deps.sleep] injectable for tests
   */
  constructor({
    queue, host, logger = silentLogger, stats = new DeliveryStats(),
    baseDelayMs = 500, maxDelayMs = 30_000, random = Math.random, sleep = abortableSleep,
  }) {
    Object.assign(this, { queue, host, log: logger, stats, baseDelayMs, maxDelayMs, random, sleep });
    this.abort = new AbortController();
    this.loop = undefined;
  }

  /**
   * Start the loop on the event loop. Idempotent. Pending items from an earlier run are at the
   * head of the queue, so they go first.
   *
   * @returns {Promise<void>} settles when the loop ends (after `stop()`); rejects only on a bug
   *   or an I/O error acking the queue, which the owner should treat as fatal.
   */
  start() {
    this.loop ??= this.#run();
    return this.loop;
  }

  /**
   * Stop: the current backoff sleep and any in-flight request are aborted; an item whose answer
   * was not seen stays queued (delivered again next start). Resolves when the loop has ended.
   */
  async stop() {
    this.abort.abort();
    await this.loop;
  }

  async #run() {
    const { signal } = this.abort;
    let attempt = 0;
    while (!signal.aborted) {
      const item = this.queue.peek();
      if (!item) {
        await this.queue.waitForItem(signal);
        continue;
      }
      let verdict;
      let waitHint = 0;
      try {
        const res = await this.host.postJson(INBOUND_PATH, item.payload, { signal });
        verdict = classifyStatus(res.status);
        if (verdict === 'poison') {
          this.log.error({ seq: item.seq, id: item.payload.id, status: res.status, body: String(res.body ?? '').slice(0, 300) },
            'host rejected inbound message as invalid; dropped');
        } else if (verdict === 'retry') {
          this.stats.lastError = `HTTP ${res.status}`;
          waitHint = res.status === 429 ? retryAfterMs(res.headers) : 0;
        }
      } catch (err) {
        if (signal.aborted) break;
        verdict = 'retry';
        this.stats.lastError = err.message;
      }
      if (verdict === 'ok' || verdict === 'poison') {
        this.queue.ack(item.seq);
        if (verdict === 'ok') this.stats.delivered += 1;
        else this.stats.poison += 1;
        if (attempt > 0) this.log.info({ attempts: attempt + 1 }, 'host delivery recovered');
        attempt = 0;
        continue;
      }
      const delay = Math.min(this.maxDelayMs, Math.max(waitHint,
        backoffDelay(attempt, { baseMs: this.baseDelayMs, maxMs: this.maxDelayMs, random: this.random })));
      if (attempt % 10 === 0) {
        // First failure, then every tenth retry (about every 5 min once capped): not one per retry.
        this.log.warn({ seq: item.seq, pending: this.queue.size, err: this.stats.lastError, retry_in_ms: delay },
          'host delivery failing; will retry');
      }
      this.stats.retries += 1;
      attempt += 1;
      await this.sleep(delay, signal);
    }
  }
}
