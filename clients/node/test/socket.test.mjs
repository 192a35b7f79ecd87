// A daemon on a unix socket that requires client keys: found from the environment, as `tokend exec` sets it.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import axios from 'axios';

import { TokendClient, TokendError, attachTokend, getCredential, tokendFetch } from '../index.js';
import { startTokend } from './harness.mjs';

const KEY = 'node-test-client-key-0123456789';
const CLIENTS = `
[clients.app]
key = "${KEY}"
providers = ["felloh", "flotiq"]
`;

let tokend;
before(async () => {
  tokend = await startTokend({ socket: true, extra: CLIENTS });
  process.env.TOKEND_URL = `unix:${tokend.socketPath}`;
  process.env.TOKEND_CLIENT_KEY = KEY;
});
after(() => tokend?.stop());

async function rejection(promise) {
  const error = await promise.then(() => assert.fail('expected a TokendError'), (caught) => caught);
  assert.ok(error instanceof TokendError, `${error}`);
  return error;
}

test('the default client finds the socket and the key in the environment', async () => {
  const credential = await getCredential('felloh');
  assert.equal(credential.headers.Authorization, `Bearer ${credential.token}`);
  const organisations = await fetch(`${tokend.fellohUrl}/agent/organisations`, { headers: credential.headers });
  assert.equal(organisations.status, 200);
});

test('the socket as unix:///path, as an option, and the key from a file', async () => {
  const keyFile = join(tokend.dir, 'client-key');
  await writeFile(keyFile, `${KEY}\n`, { mode: 0o600 });
  const clients = [
    new TokendClient({ url: `unix://${tokend.socketPath}`, clientKey: KEY }),
    new TokendClient({ socketPath: tokend.socketPath, clientKeyFile: keyFile }),
  ];
  for (const client of clients) {
    assert.equal((await client.getCredential('flotiq')).token, 'demo-flotiq-read-only-key');
    client.close();
  }
});

test('no key or an unknown one is unauthorized, a provider outside the key\'s list is forbidden', async () => {
  const noKey = await rejection(new TokendClient({ socketPath: tokend.socketPath }, {}).getCredential('felloh'));
  assert.equal(noKey.code, 'unauthorized');
  assert.equal(noKey.status, 401);
  const wrong = 'a-key-tokend-has-never-heard-of';
  const unknown = await rejection(new TokendClient({ socketPath: tokend.socketPath, clientKey: wrong }).getCredential('felloh'));
  assert.equal(unknown.code, 'unauthorized');
  assert.ok(!unknown.message.includes(wrong));
  const outside = await rejection(getCredential('fts'));
  assert.equal(outside.code, 'forbidden');
  assert.equal(outside.status, 403);
  assert.ok(!outside.message.includes(KEY));
});

test('fetch and axios refresh over the socket with the key when the upstream refuses the token', async () => {
  const fetchFelloh = tokendFetch('felloh');
  const felloh = axios.create();
  attachTokend(felloh, 'felloh');
  assert.equal((await fetchFelloh(tokend.echoUrl)).status, 200);
  await new Promise((resolve) => setTimeout(resolve, 100)); // past min_refresh_interval: see fetch.test.mjs
  await tokend.revoke('felloh');
  const logins = (await tokend.counts()).felloh.logins;
  const [viaFetch, viaAxios] = await Promise.all([fetchFelloh(tokend.echoUrl, { method: 'POST', body: 'a' }), felloh.post(tokend.echoUrl, 'b')]);
  assert.equal(viaFetch.status, 200);
  assert.equal(viaAxios.status, 200);
  // Both wrappers use the default client, so they share the one refresh.
  assert.equal((await tokend.counts()).felloh.logins, logins + 1);
});
