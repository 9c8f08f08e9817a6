import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { ConfigError, loadConfig } from '../src/config.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'main.js');

test('defaults with only the secret set', () => {
  const c = loadConfig({ CALLENGINE_SIDECAR_SECRET: 'abc' }, '/srv/app');
  assert.deepEqual(c, {
    hostUrl: 'http://127.0.0.1:8080',
    secret: 'abc',
    port: 3001,
    authDir: '/srv/app/var/whatsapp-auth',
    queueFile: '/srv/app/var/whatsapp-outbox.jsonl',
    logLevel: 'info',
  });
});

test('every variable is read; trailing slash dropped from the host URL', () => {
  const c = loadConfig({
    CALLENGINE_SIDECAR_SECRET: 'abc',
    CALLENGINE_HOST_URL: 'http://10.0.0.5:9000/',
    CALLENGINE_SIDECAR_PORT: '4010',
    CALLENGINE_WHATSAPP_AUTH_DIR: '/data/auth',
    CALLENGINE_WHATSAPP_QUEUE: 'q/out.jsonl',
    CALLENGINE_SIDECAR_LOG_LEVEL: 'warn',
  }, '/srv/app');
  assert.deepEqual(c, {
    hostUrl: 'http://10.0.0.5:9000', secret: 'abc', port: 4010, authDir: '/data/auth', queueFile: '/srv/app/q/out.jsonl', logLevel: 'warn',
  });
});

test('bad values raise ConfigError naming the variable', () => {
  const cases = [
    [{}, /CALLENGINE_SIDECAR_SECRET/],
    [{ CALLENGINE_SIDECAR_SECRET: '  ' }, /CALLENGINE_SIDECAR_SECRET/],
    [{ CALLENGINE_SIDECAR_SECRET: 'a', CALLENGINE_HOST_URL: 'not a url' }, /CALLENGINE_HOST_URL/],
    [{ CALLENGINE_SIDECAR_SECRET: 'a', CALLENGINE_HOST_URL: 'ftp://x' }, /CALLENGINE_HOST_URL/],
    [{ CALLENGINE_SIDECAR_SECRET: 'a', CALLENGINE_SIDECAR_PORT: '70000' }, /CALLENGINE_SIDECAR_PORT/],
    [{ CALLENGINE_SIDECAR_SECRET: 'a', CALLENGINE_SIDECAR_PORT: '30a1' }, /CALLENGINE_SIDECAR_PORT/],
    [{ CALLENGINE_SIDECAR_SECRET: 'a', CALLENGINE_SIDECAR_LOG_LEVEL: 'loud' }, /CALLENGINE_SIDECAR_LOG_LEVEL/],
  ];
  for (const [env, re] of cases) {
    assert.throws(() => loadConfig(env, '/'), (err) => err instanceof ConfigError && re.test(err.message), JSON.stringify(env));
  }
});

test('main.js exits 2 with a clear message when the secret is missing', () => {
  const env = { ...process.env };
  delete env.CALLENGINE_SIDECAR_SECRET;
  const r = spawnSync(process.execPath, [MAIN], { env, encoding: 'utf8', timeout: 20_000 });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /CALLENGINE_SIDECAR_SECRET is required/);
});
