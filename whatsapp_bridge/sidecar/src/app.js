// Wiring: queue + delivery + inbound handler + API + a WhatsApp transport, with one owner.
//
// `startSidecar` owns everything it opens and `stop()` closes it in reverse order of start:
// the transport first (no more inbound), then the API server, the delivery loop (an unanswered
// in-flight item stays queued), the queue file and the host connections. The transport is made by
// a factory so tests run the whole sidecar with a fake one and no WhatsApp network; `main.js`
// passes the Baileys factory.
//
// Start order: queue (recovers pending items) -> delivery loop (pending items go to the host
// before anything new) -> API listening -> transport connecting. All on the Node event loop.

import { once } from 'node:events';
import { createApiServer } from './api.js';
import { DeliveryStats, Deliverer } from './delivery.js';
import { HostClient } from './host.js';
import { InboundStats, createUpsertHandler } from './inbound.js';
import { silentLogger } from './log.js';
import { DurableQueue } from './queue.js';

export const QR_PATH = '/whatsapp/baileys/qr';

/**
 * @param {object} opts
 * @param {ReturnType<import('./config.js').loadConfig>} opts.config
 * @param {(hooks: {onUpsert: (u: object) => void, onQr: (qr: string) => void}) => import('./api.js').Transport & {start(): Promise<void>, stop(): Promise<void>}} opts.makeTransport
 * @param {import('pino').Logger} [opts.logger]
 * @param {object} [opts.delivery] extra Deliverer options (backoff timings, for tests)
 * @param {string} [opts.bindHost='127.0.0.1']
 * @param {(err: Error) => void} [opts.onFatal] the delivery loop died (queue I/O error)
 * @returns {Promise<{port: number, queue: DurableQueue, transport: object, stop: () => Promise<void>}>}
 */
export async function startSidecar({ config, makeTransport, logger = silentLogger, delivery = {}, bindHost = '127.0.0.1', onFatal = () => {} }) {
  const queue = DurableQueue.open(config.queueFile, { logger });
  const host = new HostClient({ baseUrl: config.hostUrl, secret: config.secret });
  const inboundStats = new InboundStats();
  const deliveryStats = new DeliveryStats();
  let transport;

  const onUpsert = createUpsertHandler({ queue, ownJid: () => (transport ? transport.me() : ''), stats: inboundStats });
  const onQr = (qr) => {
    host.postJson(QR_PATH, { qr }).then(
      (res) => { if (res.status < 200 || res.status >= 300) logger.warn({ status: res.status }, 'host refused the pairing QR'); },
      (err) => logger.warn({ err: err.message }, 'could not post the pairing QR to the host'),
    );
  };
  transport = makeTransport({ onUpsert, onQr });

  const deliverer = new Deliverer({ queue, host, logger, stats: deliveryStats, ...delivery });
  deliverer.start().catch((err) => {
    logger.fatal({ err: err.message }, 'inbound delivery loop failed');
    onFatal(err);
  });

  const server = createApiServer({
    transport,
    secret: config.secret,
    queueSize: () => queue.size,
    metrics: () => ({ inbound: inboundStats, delivery: deliveryStats, queue: queue.size }),
    logger,
  });
  server.listen(config.port, bindHost);
  await once(server, 'listening');
  const { port } = server.address();
  logger.info({ port, host_url: config.hostUrl, queue: queue.size }, 'sidecar listening');

  await transport.start();

  let stopped;
  const stop = () => {
    stopped ??= (async () => {
      await transport.stop();
      server.close();
      server.closeAllConnections();
      await deliverer.stop();
      queue.close();
      host.close();
    })();
    return stopped;
  };
  return { port, queue, transport, stats: { inbound: inboundStats, delivery: deliveryStats }, stop };
}
