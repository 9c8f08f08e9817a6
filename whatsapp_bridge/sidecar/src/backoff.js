// Exponential backoff with jitter, shared by host delivery and WhatsApp reconnects.
//
// delay(attempt) = min(max, base * 2^attempt) scaled by a uniform factor in [1 - jitter, 1 + jitter]
// and capped at max again. Jitter keeps a fleet of sidecars (or one sidecar's retries after a
// host restart) from hammering in lockstep. `random` is injectable so tests can pin it.

/**
 * @param {number} attempt 0 for the first retry
 * @param {object} opts
 * @param {number} opts.baseMs
 * @param {number} opts.maxMs
 * @param {number} [opts.jitter=0.2] fraction, 0..1
 * @param {() => number} [opts.random=Math.random] uniform in [0, 1)
 * @returns {number} milliseconds, integer, within [0, maxMs]
 */
export function backoffDelay(attempt, { baseMs, maxMs, jitter = 0.2, random = Math.random }) {
  const exp = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  const factor = 1 - jitter + 2 * jitter * random();
  return Math.max(0, Math.min(maxMs, Math.round(exp * factor)));
}

/**
 * Sleep that ends early (resolving, not rejecting) when `signal` aborts.
 *
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
export function abortableSleep(ms, signal) {
  if (signal?.aborted) return Promise.resolve();
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
