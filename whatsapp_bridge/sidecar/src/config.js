// Configuration from the environment. Read once at start by `main.js`.
//
//   CALLENGINE_SIDECAR_SECRET      required; shared with the host, both directions
//   CALLENGINE_HOST_URL            default http://127.0.0.1:8080
//   CALLENGINE_SIDECAR_PORT        default 3001 (the API binds 127.0.0.1 only)
//   CALLENGINE_WHATSAPP_AUTH_DIR   default var/whatsapp-auth (relative to the working directory)
//   CALLENGINE_WHATSAPP_QUEUE      default var/whatsapp-outbox.jsonl
//   CALLENGINE_SIDECAR_LOG_LEVEL   default info (pino level names; Baileys itself stays at warn)

import path from 'node:path';

/** A configuration problem; `message` says which variable and why. `main.js` exits 2. */
export class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ConfigError';
  }
}

const LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

/**
 * @param {Record<string, string | undefined>} [env=process.env]
 * @param {string} [cwd=process.cwd()] base for relative paths
 * @returns {{hostUrl: string, secret: string, port: number, authDir: string, queueFile: string, logLevel: string}}
 * @throws {ConfigError}
 */
export function loadConfig(env = process.env, cwd = process.cwd()) {
  const secret = env.CALLENGINE_SIDECAR_SECRET ?? '';
  if (secret.trim() === '') {
    throw new ConfigError('CALLENGINE_SIDECAR_SECRET is required: set it to the shared secret configured on the callengine host');
  }

  const hostUrl = (env.CALLENGINE_HOST_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
  let parsed;
  try {
    parsed = new URL(hostUrl);
  } catch {
    throw new ConfigError(`CALLENGINE_HOST_URL is not a URL: ${JSON.stringify(hostUrl)}`);
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new ConfigError(`CALLENGINE_HOST_URL must be http:// or https://, got ${JSON.stringify(hostUrl)}`);
  }

  const portText = env.CALLENGINE_SIDECAR_PORT || '3001';
  const port = Number(portText);
  if (!/^\d+$/.test(portText) || port > 65535) {
    throw new ConfigError(`CALLENGINE_SIDECAR_PORT must be an integer 0..65535, got ${JSON.stringify(portText)}`);
  }

  const logLevel = env.CALLENGINE_SIDECAR_LOG_LEVEL || 'info';
  if (!LEVELS.has(logLevel)) {
    throw new ConfigError(`CALLENGINE_SIDECAR_LOG_LEVEL must be one of ${[...LEVELS].join(', ')}, got ${JSON.stringify(logLevel)}`);
  }

  return {
    hostUrl,
    secret,
    port,
    authDir: path.resolve(cwd, env.CALLENGINE_WHATSAPP_AUTH_DIR || 'var/whatsapp-auth'),
    queueFile: path.resolve(cwd, env.CALLENGINE_WHATSAPP_QUEUE || 'var/whatsapp-outbox.jsonl'),
    logLevel,
  };
}
