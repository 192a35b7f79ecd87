// The in-process cache with short-lived tokens: reused while fresh, read again before it expires.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { TokendClient, tokendFetch } from '../index.js';
import { startTokend } from './harness.mjs';

const LIFETIME = 4; // seconds: tokend renews such a short-lived token two seconds before it expires

let tokend;
before(async () => {
  tokend = await startTokend({ lifetime: LIFETIME });
});
after(() => tokend?.stop());

test('through renewals, the client moves on to each new token, every request carries a live one, and few ask tokend', async (t) => {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  const fetchFelloh = tokendFetch('felloh', { client });
  const gets = () => tokend.metric('tokend_requests_total', { route: '/token/{name}', status: '200' });
  const firstGets = await gets();
  const tokens = new Set();
  const statuses = new Set();
  let requests = 0;
  // Until the client has used three tokens: a few lifetimes, bounded far beyond that for a busy machine.
  const deadline = Date.now() + 30_000;
  while (tokens.size < 3 && Date.now() < deadline) {
    const credential = await client.getCredential('felloh');
    tokens.add(credential.token);
    // The plain upstream, not the wrapper: a 401 here must fail the test, not be retried away.
    const response = await fetch(`${tokend.fellohUrl}/agent/organisations`, { headers: credential.headers });
    statuses.add(response.status);
    requests += 1;
    await sleep(20);
  }
  assert.equal(tokens.size, 3, 'the client moved on to renewed tokens');
  assert.deepEqual([...statuses], [200]);
  // About one read per token (each shortly before the one it holds expires), not one per request: the
  // bound leaves room for a busy machine, where tokend's renewal may come late and a read brings no new token.
  const reads = (await gets()) - firstGets;
  assert.ok(reads <= 10 && reads < requests, `${reads} reads of tokend for ${requests} requests`);
  assert.equal((await fetchFelloh(`${tokend.fellohUrl}/agent/organisations`)).status, 200);
});
