// What the fetch wrapper adds to a request when the token is ready (cached), against the real daemon.
//
//     TOKEND_PYTHON=/path/to/venv/bin/python node bench/overhead.mjs
//
// 1. The wrapper's own work, with no network: tokendFetch around a stub fetch that answers at once, against
//    the stub alone. This is the overhead, measured without the upstream's noise.
// 2. End to end, to a local upstream (the fake Felloh): plain fetch with the headers given by hand and
//    tokendFetch, alternating request by request so that a busy machine slows both alike.
import { performance } from 'node:perf_hooks';

import { TokendClient, tokendFetch } from '../index.js';
import { startTokend } from '../test/harness.mjs';

const CALLS = 200_000;
const REQUESTS = Number(process.env.REQUESTS ?? 2000);

const tokend = await startTokend();
try {
  const client = new TokendClient({ url: tokend.url });
  const url = `${tokend.fellohUrl}/agent/organisations`;
  const { headers } = await client.getCredential('felloh');

  const answer = { status: 200 };
  const stub = async () => answer;
  const stubbed = tokendFetch('felloh', { client, fetch: stub });
  async function perCall(send) {
    const started = performance.now();
    for (let i = 0; i < CALLS; i += 1) await send(url, { method: 'GET' });
    return ((performance.now() - started) * 1000) / CALLS;
  }
  await perCall(stub); // warm-up (JIT)
  await perCall(stubbed);
  const [bare, wrapped] = [await perCall(stub), await perCall(stubbed)];

  const wrappedFetch = tokendFetch('felloh', { client });
  const plainFetch = (target) => fetch(target, { headers });
  const totals = { plain: 0, wrapped: 0 };
  async function timed(kind, send) {
    const started = performance.now();
    await (await send(url)).arrayBuffer();
    totals[kind] += performance.now() - started;
  }
  for (let i = 0; i < 200; i += 1) await timed('plain', plainFetch); // warm-up: connections, JIT
  totals.plain = 0;
  for (let i = 0; i < REQUESTS; i += 1) {
    await timed('plain', plainFetch);
    await timed('wrapped', wrappedFetch);
  }
  const cached = performance.now();
  for (let i = 0; i < CALLS; i += 1) await client.getCredential('felloh');
  const getCredential = ((performance.now() - cached) * 1000) / CALLS;

  const us = (value) => `${value.toFixed(1).padStart(7)} us`;
  console.log(`wrapper overhead (no network)   ${us(wrapped - bare)} per request (${CALLS} calls)`);
  console.log(`cached getCredential            ${us(getCredential)} per call`);
  console.log(`plain fetch to a local upstream ${us((totals.plain * 1000) / REQUESTS)} per request (${REQUESTS} each, alternating)`);
  console.log(`tokendFetch, same upstream      ${us((totals.wrapped * 1000) / REQUESTS)} per request`);
  client.close();
} finally {
  await tokend.stop();
}
