// getCredential, refresh and the error codes, against the real daemon and the fake upstreams.
import { createHash, createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';

import { TokendClient, TokendError, getCredential, refresh } from '../index.js';
import { startTokend } from './harness.mjs';

// A provider whose upstream refuses connections: its token never becomes available.
const BROKEN = `
[providers.broken]
kind = "felloh"
base_url = "http://127.0.0.1:9"
public_key = "not-a-real-public-key"
private_key = "not-a-real-private-key"
`;

let tokend;
before(async () => {
  tokend = await startTokend({ extra: BROKEN });
  process.env.TOKEND_URL = tokend.url; // the default client reads it on first use
});
after(() => tokend?.stop());

const GETS = { route: '/token/{name}', status: '200' };
const REFRESHES = { route: '/token/{name}/refresh', status: '200' };

test('getCredential returns what the upstream call needs, for each kind of provider', async () => {
  const felloh = await getCredential('felloh');
  assert.equal(felloh.provider, 'felloh');
  assert.equal(felloh.tokenType, 'Bearer');
  assert.deepEqual(felloh.headers, { Authorization: `Bearer ${felloh.token}` });
  assert.deepEqual(felloh.query, {});
  assert.ok(felloh.expiresAt instanceof Date && felloh.expiresAt > new Date(Date.now() + 3000_000));
  // The fake upstream accepts exactly that header.
  const organisations = await fetch(`${tokend.fellohUrl}/agent/organisations`, { headers: felloh.headers });
  assert.equal(organisations.status, 200);

  const fts = await getCredential('fts');
  assert.equal(fts.headers.Authorization, `Bearer ${fts.token}`);
  assert.ok(fts.headers['x-api-key']);

  const flotiq = await getCredential('flotiq');
  assert.equal(flotiq.expiresAt, null);
  assert.deepEqual(flotiq.headers, { 'X-AUTH-TOKEN': flotiq.token });
  assert.deepEqual(flotiq.query, { auth_token: flotiq.token });
  assert.ok(Object.isFrozen(flotiq) && Object.isFrozen(flotiq.headers));
});

test('a credential is cached in the process, and concurrent first reads share one request', async () => {
  const client = new TokendClient({ url: tokend.url });
  const before = await tokend.metric('tokend_requests_total', GETS);
  const credentials = await Promise.all(Array.from({ length: 20 }, () => client.getCredential('fts')));
  for (let i = 0; i < 20; i += 1) await client.getCredential('fts');
  assert.equal(new Set(credentials.map((credential) => credential.token)).size, 1);
  assert.equal(await tokend.metric('tokend_requests_total', GETS), before + 1);
  client.close();
});

test('refresh naming the rejected token brings a new token with one login, cached for the next call', async () => {
  const client = new TokendClient({ url: tokend.url });
  const old = await client.getCredential('felloh');
  const logins = (await tokend.counts()).felloh.logins;
  const refreshes = await tokend.metric('tokend_requests_total', REFRESHES);
  const fresh = await Promise.all(Array.from({ length: 10 }, () => client.refresh('felloh', { rejected: old.token })));
  assert.equal(new Set(fresh.map((credential) => credential.token)).size, 1);
  assert.notEqual(fresh[0].token, old.token);
  assert.equal((await tokend.counts()).felloh.logins, logins + 1);
  assert.equal(await tokend.metric('tokend_requests_total', REFRESHES), refreshes + 1);
  assert.equal((await client.getCredential('felloh')).token, fresh[0].token);
  // The module-level function goes through the default client, which now caches the newer token too.
  // (Past the config's min_refresh_interval of 0.05 s: the token refused now replaced one refused too, and
  // tokend makes such logins at most once per interval; see fetch.test.mjs.)
  await sleep(100);
  const again = await refresh('felloh', { rejected: fresh[0].token });
  assert.notEqual(again.token, fresh[0].token);
  assert.equal((await getCredential('felloh')).token, again.token);
  // A plain refresh (no token named) is accepted by tokend and answers a usable credential.
  await sleep(100);
  const plain = await refresh('felloh');
  assert.equal((await fetch(`${tokend.fellohUrl}/agent/organisations`, { headers: plain.headers })).status, 200);
  client.close();
});

async function rejection(promise) {
  const error = await promise.then(() => assert.fail('expected a TokendError'), (caught) => caught);
  assert.ok(error instanceof TokendError, `${error}`);
  return error;
}

test('an unknown provider is unknown_provider', async () => {
  const error = await rejection(getCredential('nope'));
  assert.equal(error.code, 'unknown_provider');
  assert.equal(error.status, 404);
  assert.equal(error.provider, 'nope');
});

test('a provider with no token is token_unavailable', async () => {
  const error = await rejection(getCredential('broken'));
  assert.equal(error.code, 'token_unavailable');
  assert.equal(error.status, 503);
  assert.equal(error.provider, 'broken');
});

test('a forced login the upstream refuses is refresh_failed, and the cached token stays', async () => {
  const client = new TokendClient({ url: tokend.url });
  const current = await client.getCredential('fts');
  await tokend.fail('fts', 503, 1);
  const error = await rejection(client.refresh('fts', { rejected: current.token }));
  assert.equal(error.code, 'refresh_failed');
  assert.equal(error.status, 502);
  assert.ok(!error.message.includes(current.token));
  assert.equal((await client.getCredential('fts')).token, current.token);
  client.close();
});

test('no daemon is daemon_unreachable, over TCP and on a socket path', async () => {
  for (const options of [{ url: 'http://127.0.0.1:9' }, { socketPath: `${tokend.dir}/no-such.sock` }]) {
    const error = await rejection(new TokendClient(options).getCredential('felloh'));
    assert.equal(error.code, 'daemon_unreachable');
    assert.match(error.message, /cannot reach tokend at (http:\/\/127\.0\.0\.1:9|unix:.*no-such\.sock)/);
  }
});

test('an address that is no daemon\'s is daemon_unreachable too', async () => {
  for (const url of ['ftp://127.0.0.1/', 'not a url']) {
    const error = await rejection(getCredential('felloh', { url }));
    assert.equal(error.code, 'daemon_unreachable');
  }
});

test('a throttled refresh is refresh_throttled with retryAfter, sent as tokend expects it', async (t) => {
  // A stand-in for a daemon that throttles (the real one does once a provider asks for Retry-After).
  const seen = [];
  const server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      seen.push({ method: request.method, url: request.url, headers: request.headers, body });
      response.writeHead(429, { 'content-type': 'application/json', 'retry-after': '7' });
      response.end(JSON.stringify({ error: 'refresh_throttled', message: 'Felloh asked to wait.', provider: 'felloh' }));
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  const key = 'a-client-key-of-at-least-16-chars';
  const client = new TokendClient({ url: `http://127.0.0.1:${server.address().port}`, clientKey: key });
  const error = await rejection(client.refresh('felloh', { rejected: 'the-rejected-token' }));
  assert.equal(error.code, 'refresh_throttled');
  assert.equal(error.retryAfter, 7);
  assert.equal(error.status, 429);
  assert.ok(!error.message.includes('the-rejected-token') && !error.message.includes(key));
  assert.equal(seen.length, 1);
  assert.equal(seen[0].method, 'POST');
  assert.equal(seen[0].url, '/token/felloh/refresh');
  assert.deepEqual(JSON.parse(seen[0].body), { rejected: 'the-rejected-token' });
  assert.equal(seen[0].headers['content-type'], 'application/json');
  assert.ok(seen[0].headers['x-tokend-request']);
  // Whatever answers on the port gets a signature for this one request, never the key (tokend takes it once).
  const signed = seen[0].headers.authorization.match(/^Tokend-HMAC client=([0-9a-f]{16}), ts=(\d+), nonce=([\w-]{16,}), sig=([\w-]{43})$/);
  assert.ok(signed, seen[0].headers.authorization);
  assert.ok(!JSON.stringify(seen).includes(key));
  assert.equal(signed[1], createHash('sha256').update(key).digest().subarray(0, 8).toString('hex'));
  const message = `POST\n/token/felloh/refresh\n${signed[2]}\n${signed[3]}`;
  assert.equal(signed[4], createHmac('sha256', key).update(message).digest('base64url'));
  assert.ok(Math.abs(Number(signed[2]) - Date.now() / 1000) < 30);
  assert.match(seen[0].headers['user-agent'], /^tokend-client-node\/\d+\.\d+\.\d+$/);
  // A plain refresh has no body at all (tokend reads any body as {"rejected": ...}).
  await rejection(client.refresh('felloh'));
  assert.equal(seen[1].body, '');
  assert.equal(seen[1].headers['content-length'], '0');
  assert.equal(seen[1].headers['content-type'], undefined);
  client.close();
});

test('a client key that cannot be a header value is refused without showing it', () => {
  assert.throws(() => new TokendClient({ url: tokend.url, clientKey: 'secret\r\nX-Evil: 1' }), (error) => {
    assert.equal(error.code, 'bad_client_key');
    assert.ok(!error.message.includes('secret'));
    return true;
  });
});
