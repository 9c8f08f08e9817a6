// Recipient normalisation: the host may address a chat by a WhatsApp JID or by a phone number.
//
// WhatsApp addresses a person as `<digits>@s.whatsapp.net` (phone-number JID) or, since the LID
// migration, as `<digits>@lid`; groups are `<id>@g.us`. A phone number from the host is taken to
// be international (E.164, optional `+` or `00` prefix, any spaces, dashes, dots or parentheses
// inside). A national number such as `054-123-4567` is refused rather than guessed: the sidecar
// does not know which country the business is in, and sending to the wrong person is worse than
// a 400.

/** Raised for an address that cannot be a WhatsApp recipient; `message` names the problem. */
export class InvalidRecipientError extends Error {
  constructor(message) {
    super(message);
    this.name = 'InvalidRecipientError';
  }
}

const JID_SERVERS = new Set(['s.whatsapp.net', 'c.us', 'g.us', 'lid', 'broadcast', 'newsletter']);
const NUMBER_SEPARATORS = /[\s\-().\u00a0\u200e\u200f\u202a-\u202e]/g; // incl. bidi marks pasted from Hebrew UIs

/**
 * Turn a JID or an international phone number into the JID Baileys sends to.
 *
 * `+972 54-123-4567` -> `972541234567@s.whatsapp.net`; `...@c.us` is rewritten to
 * `@s.whatsapp.net`; a device suffix (`972...:12@s.whatsapp.net`) is dropped.
 *
 * @param {unknown} to
 * @returns {string}
 * @throws {InvalidRecipientError}
 */
export function normalizeRecipient(to) {
  if (typeof to !== 'string') throw new InvalidRecipientError('"to" must be a string');
  const trimmed = to.trim();
  if (trimmed === '') throw new InvalidRecipientError('"to" must not be empty');

  if (trimmed.includes('@')) {
    const at = trimmed.lastIndexOf('@');
    let user = trimmed.slice(0, at);
    const server = trimmed.slice(at + 1).toLowerCase();
    if (!JID_SERVERS.has(server)) {
      throw new InvalidRecipientError(`"to" has an unknown WhatsApp server "@${server}"`);
    }
    user = user.split(':')[0]; // device suffix
    if (user === '' || !/^[0-9A-Za-z.\-_]+$/.test(user)) {
      throw new InvalidRecipientError('"to" has an invalid user part before "@"');
    }
    return `${user}@${server === 'c.us' ? 's.whatsapp.net' : server}`;
  }

  let digits = trimmed.replace(NUMBER_SEPARATORS, '');
  if (digits.startsWith('+')) digits = digits.slice(1);
  else if (digits.startsWith('00')) digits = digits.slice(2);
  else if (digits.startsWith('0')) {
    throw new InvalidRecipientError('"to" must be an international number (E.164, e.g. +972541234567), not a national one');
  }
  if (!/^[1-9][0-9]{6,14}$/.test(digits)) {
    throw new InvalidRecipientError('"to" must be a WhatsApp JID or an E.164 phone number of 7 to 15 digits');
  }
  return `${digits}@s.whatsapp.net`;
}

/**
 * Our own account's JID without the device suffix: Baileys reports `sock.user.id` as
 * `972501234567:12@s.whatsapp.net`; the host wants `972501234567@s.whatsapp.net`.
 *
 * @param {string | undefined | null} jid
 * @returns {string} `''` when unknown.
 */
export function bareJid(jid) {
  if (typeof jid !== 'string' || !jid.includes('@')) return '';
  const at = jid.lastIndexOf('@');
  return `${jid.slice(0, at).split(':')[0]}@${jid.slice(at + 1)}`;
}
