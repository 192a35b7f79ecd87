// What the fetch wrapper adds to a request when the token is ready (cached), against the real daemon.
//
//     TOKEND_PYTHON=/path/to/venv/bin/python node bench/overhead.mjs
//
// Both loops call the same local upstream (the fake Felloh) one request at a time: the plain global fetch
// with the headers given by hand, then tokendFetch; the difference per request is the wrapper's overhead.
import { performance } from 'node:perf_hooks';

import { TokendClient, tokendFetch } from '../index.js';
import { startTokend } from '../test/harness.mjs';

const REQUESTS = Number(process.env.REQUESTS ?? 2000);
const ROUNDS = 5;

const tokend = await startTokend();
try {
  const client = new TokendClient({ url: tokend.url });
  const url = `${tokend.fellohUrl}/agent/organisations`;
  const { headers } = await client.getCredential('felloh');
  const wrapped = tokendFetch('felloh', { client });
  const plain = (target) => fetch(target, { headers });

  async function perRequest(send) {
    const started = performance.now();
    for (let i = 0; i < REQUESTS; i += 1) await (await send(url)).arrayBuffer();
    return ((performance.now() - started) * 1000) / REQUESTS; // microseconds
  }

  await perRequest(plain); // warm-up: connections, JIT
  await perRequest(wrapped);
  const plainTimes = [];
  const wrappedTimes = [];
  for (let round = 0; round < ROUNDS; round += 1) {
    plainTimes.push(await perRequest(plain));
    wrappedTimes.push(await perRequest(wrapped));
  }
  const median = (values) => values.sort((a, b) => a - b)[Math.floor(values.length / 2)];
  const cached = performance.now();
  for (let i = 0; i < 100_000; i += 1) await client.getCredential('felloh');
  const getCredential = ((performance.now() - cached) * 1000) / 100_000;
  console.log(`plain fetch        ${median(plainTimes).toFixed(1)} us/request (median of ${ROUNDS} x ${REQUESTS})`);
  console.log(`tokendFetch        ${median(wrappedTimes).toFixed(1)} us/request`);
  console.log(`overhead           ${(median(wrappedTimes) - median(plainTimes)).toFixed(1)} us/request`);
  console.log(`getCredential      ${getCredential.toFixed(2)} us/call (cached)`);
  client.close();
} finally {
  await tokend.stop();
}
