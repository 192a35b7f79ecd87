// The in-process cache with short-lived tokens: reused while fresh, read again before it expires.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { TokendClient, tokendFetch } from '../index.js';
import { startTokend } from './harness.mjs';

const LIFETIME = 4; // seconds: tokend renews each token at about two thirds of that

let tokend;
before(async () => {
  tokend = await startTokend({ lifetime: LIFETIME });
});
after(() => tokend?.stop());

test('through two renewals, every request carries a live token and few of them ask tokend', async (t) => {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  const fetchFelloh = tokendFetch('felloh', { client });
  const gets = () => tokend.metric('tokend_requests_total', { route: '/token/{name}', status: '200' });
  const [firstGets, firstLogins] = [await gets(), (await tokend.counts()).felloh.logins];
  const tokens = new Set();
  const statuses = new Set();
  let requests = 0;
  // Until tokend has logged in twice more, and a bound far beyond that (2 x 4 s) for a busy machine.
  const deadline = Date.now() + 30_000;
  while ((await tokend.counts()).felloh.logins < firstLogins + 2 && Date.now() < deadline) {
    const credential = await client.getCredential('felloh');
    tokens.add(credential.token);
    // The plain upstream, not the wrapper: a 401 here must fail the test, not be retried away.
    const response = await fetch(`${tokend.fellohUrl}/agent/organisations`, { headers: credential.headers });
    statuses.add(response.status);
    requests += 1;
    await sleep(20);
  }
  assert.ok((await tokend.counts()).felloh.logins >= firstLogins + 2, 'tokend renewed the token twice');
  assert.deepEqual([...statuses], [200]);
  assert.ok(tokens.size >= 2, `the client moved on to the renewed token (${tokens.size} seen)`);
  // A few reads per lifetime (each again shortly before the token it holds expires), not one per request.
  const reads = (await gets()) - firstGets;
  assert.ok(reads <= 12 && reads * 5 < requests, `${reads} reads of tokend for ${requests} requests`);
  assert.equal((await fetchFelloh(`${tokend.fellohUrl}/agent/organisations`)).status, 200);
});
