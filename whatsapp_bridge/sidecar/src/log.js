// Structured logging for the sidecar.
//
// One JSON object per line on stdout (pino), with `svc` on every line so the lines can be mixed
// with the Python host's. Only lifecycle events are logged (connection state, pairing, delivery
// trouble, poison payloads); nothing is logged per inbound message or per API call on the happy
// path. Baileys gets its own child logger pinned at `warn`: at `info` it is very chatty.

import pino from 'pino';

/**
 * Build the process logger.
 *
 * @param {string} [level='info'] pino level name (`silent` in tests).
 * @returns {import('pino').Logger}
 */
export function createLogger(level = 'info') {
  return pino({
    level,
    base: { svc: 'whatsapp-sidecar' },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}

/** A logger that drops everything (tests, and callers that pass none). */
export const silentLogger = pino({ level: 'silent' });
