// Entry point: `node src/main.js` (or `npm start`). Reads the environment (config.js), starts the
// sidecar with the Baileys transport, and stops it cleanly on SIGINT/SIGTERM (a second signal
// exits at once). Exit codes: 0 after a clean stop, 2 for a configuration error, 1 when the
// sidecar cannot start or its delivery loop dies.

import { startSidecar } from './app.js';
import { ConfigError, loadConfig } from './config.js';
import { createLogger } from './log.js';
import { BaileysTransport } from './whatsapp.js';

const SEVERITY = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

async function main() {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`whatsapp-sidecar: configuration error: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);
  const baileysLevel = SEVERITY[Math.max(SEVERITY.indexOf('warn'), SEVERITY.indexOf(config.logLevel))];
  const baileysLogger = logger.child({ component: 'baileys' }, { level: baileysLevel });

  let app;
  try {
    app = await startSidecar({
      config,
      logger,
      makeTransport: ({ onUpsert, onQr }) => new BaileysTransport({ authDir: config.authDir, onUpsert, onQr, logger, baileysLogger }),
      onFatal: () => process.exit(1),
    });
  } catch (err) {
    logger.fatal({ err: err.message }, 'sidecar failed to start');
    process.exit(1);
  }

  let stopping = false;
  const onSignal = (signal) => {
    if (stopping) process.exit(1);
    stopping = true;
    logger.info({ signal }, 'sidecar stopping');
    app.stop().then(() => process.exit(0), (err) => {
      logger.error({ err: err.message }, 'sidecar stop failed');
      process.exit(1);
    });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

main();
