// What to do when the WhatsApp connection closes. Pure, so it is tested without Baileys.
//
// Status codes are Baileys' `DisconnectReason` (lib/Types/index: loggedOut 401,
// restartRequired 515, ...), repeated here so this module does not import Baileys.
//   401 loggedOut        -> the phone unlinked us: clear the auth dir and connect at once,
//                           which shows a fresh QR to pair again.
//   515 restartRequired  -> WhatsApp asks for a new socket (it always does right after pairing):
//                           connect at once.
//   anything else        -> connect again after backoff: 1 s doubling to 60 s, ±20 % jitter;
//                           the attempt counter is reset when a connection opens.

import { backoffDelay } from './backoff.js';

export const LOGGED_OUT = 401;
export const RESTART_REQUIRED = 515;
export const CONNECTION_REPLACED = 440;

/**
 * @param {number | undefined} statusCode `lastDisconnect.error.output.statusCode`
 * @param {number} attempt consecutive failed connections so far (0 after an open)
 * @param {{baseMs?: number, maxMs?: number, random?: () => number}} [opts]
 * @returns {{delayMs: number, resetAuth: boolean, countsAsFailure: boolean}}
 */
export function planReconnect(statusCode, attempt, { baseMs = 1000, maxMs = 60_000, random = Math.random } = {}) {
  if (statusCode === LOGGED_OUT) return { delayMs: 0, resetAuth: true, countsAsFailure: false };
  if (statusCode === RESTART_REQUIRED) return { delayMs: 0, resetAuth: false, countsAsFailure: false };
  return { delayMs: backoffDelay(attempt, { baseMs, maxMs, random }), resetAuth: false, countsAsFailure: true };
}
