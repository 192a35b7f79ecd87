// The fetch wrapper against the real daemon and the fake upstreams: headers, query, and the 401 rule.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { TokendClient, TokendError, tokendFetch } from '../index.js';
import { startTokend, waitUntil } from './harness.mjs';

const REFRESHES = { route: '/token/{name}/refresh', status: '200' };

let tokend;
before(async () => {
  tokend = await startTokend();
});
after(() => tokend?.stop());

/** A fresh client per test, so that no test inherits another's cached token. */
function fellohFetch(t) {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  return tokendFetch('felloh', { client });
}

/** What each counter moved by while `action` ran: felloh logins, refreshes asked of tokend, echo answers. */
async function moved(action) {
  const snapshot = async () => ({
    logins: (await tokend.counts()).felloh.logins,
    refreshes: await tokend.metric('tokend_requests_total', REFRESHES),
    ...(await tokend.echoCount()),
  });
  const before = await snapshot();
  const result = await action();
  const after = await snapshot();
  return { result, ...Object.fromEntries(Object.keys(after).map((key) => [key, after[key] - before[key]])) };
}

// tokend logs in for a refused token at most once per min_refresh_interval when the token before it was
// refused too (a guard against login loops; a daemon without the `rejected` rule answers the current token
// within it instead). The config's interval is 0.05 s, and the tests that revoke wait longer than that.
async function revoke() {
  await sleep(100);
  await tokend.revoke('felloh');
}

test('adds the provider headers, keeps the caller\'s own, and reaches the upstream', async (t) => {
  const fetchFelloh = fellohFetch(t);
  const response = await fetchFelloh(`${tokend.fellohUrl}/agent/organisations`, { headers: { 'x-trace': 'abc' } });
  assert.equal(response.status, 200);
  const echoed = await (await fetchFelloh(`${tokend.controlUrl}/open-echo`, { headers: { 'x-trace': 'abc' } })).json();
  assert.match(echoed.headers.authorization, /^Bearer .{100,}$/);
  assert.equal(echoed.headers['x-trace'], 'abc');
});

test('adds the provider query parameters to the caller\'s, for a URL, a string and a Request', async () => {
  const fetchFlotiq = tokendFetch('flotiq', { url: tokend.url });
  const url = new URL(`${tokend.controlUrl}/open-echo?page=2`);
  for (const input of [url, url.href, new Request(url, { headers: { 'x-trace': 'r' } })]) {
    const echoed = await (await fetchFlotiq(input)).json();
    assert.deepEqual(echoed.query, { page: ['2'], auth_token: ['demo-flotiq-read-only-key'] });
    assert.equal(echoed.headers['x-auth-token'], 'demo-flotiq-read-only-key');
  }
  const response = await fetchFlotiq(`${tokend.flotiqUrl}/api/v1/content/blogposts`);
  assert.equal(response.status, 200);
});

test('a revoked token: one refresh, one login, one retry, and the caller sees the 200', async (t) => {
  const fetchFelloh = fellohFetch(t);
  assert.equal((await fetchFelloh(tokend.echoUrl)).status, 200);
  await revoke();
  const { result, logins, refreshes, total, unauthorized } = await moved(() => fetchFelloh(tokend.echoUrl));
  assert.equal(result.status, 200);
  assert.deepEqual({ logins, refreshes, total, unauthorized }, { logins: 1, refreshes: 1, total: 2, unauthorized: 1 });
});

test('a bodyless Request is retried too, with its own headers kept', async (t) => {
  const fetchFelloh = fellohFetch(t);
  await fetchFelloh(tokend.echoUrl);
  await revoke();
  const request = new Request(tokend.echoUrl, { headers: { 'x-trace': 'kept' } });
  const { result, refreshes, unauthorized } = await moved(() => fetchFelloh(request));
  assert.equal(result.status, 200);
  assert.deepEqual({ refreshes, unauthorized }, { refreshes: 1, unauthorized: 1 });
  const echoed = await (await fetchFelloh(new Request(`${tokend.controlUrl}/open-echo`, { headers: { 'x-trace': 'kept' } }))).json();
  assert.equal(echoed.headers['x-trace'], 'kept');
});

test('50 concurrent 401s cost one refresh and one login, and all 50 requests succeed', async (t) => {
  const fetchFelloh = fellohFetch(t);
  assert.equal((await fetchFelloh(tokend.echoUrl)).status, 200);
  await revoke();
  const { result, logins, refreshes, total, unauthorized } = await moved(() =>
    Promise.all(Array.from({ length: 50 }, (_, i) => fetchFelloh(tokend.echoUrl, { method: 'POST', body: `request ${i}` }))),
  );
  assert.deepEqual(result.map((response) => response.status), Array(50).fill(200));
  const bodies = await Promise.all(result.map((response) => response.json()));
  assert.deepEqual(bodies.map((echoed) => echoed.body), Array.from({ length: 50 }, (_, i) => `request ${i}`));
  assert.deepEqual({ logins, refreshes, total, unauthorized }, { logins: 1, refreshes: 1, total: 100, unauthorized: 50 });
});

test('replayable bodies are sent again as they were: string, bytes, URLSearchParams, Blob', async (t) => {
  const fetchFelloh = fellohFetch(t);
  const bodies = [
    ['{"a":1}', '{"a":1}'],
    [Buffer.from('bytes'), 'bytes'],
    [new TextEncoder().encode('typed array'), 'typed array'],
    [new URLSearchParams({ q: 'x y' }), 'q=x+y'],
    [new Blob(['blob']), 'blob'],
  ];
  for (const [body, expected] of bodies) {
    await fetchFelloh(tokend.echoUrl); // a token to revoke
    await revoke();
    const { result, refreshes, unauthorized } = await moved(() => fetchFelloh(tokend.echoUrl, { method: 'PUT', body }));
    assert.equal(result.status, 200, `${body.constructor.name} body`);
    assert.equal((await result.json()).body, expected);
    assert.deepEqual({ refreshes, unauthorized }, { refreshes: 1, unauthorized: 1 });
  }
});

test('a stream body is not retried: the 401 is returned, and the next request has the new token', async (t) => {
  const fetchFelloh = fellohFetch(t);
  await fetchFelloh(tokend.echoUrl);
  await revoke();
  const stream = () => new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode('streamed'));
      controller.close();
    },
  });
  const { result, refreshes, total, unauthorized } = await moved(() =>
    fetchFelloh(tokend.echoUrl, { method: 'POST', body: stream(), duplex: 'half' }),
  );
  assert.equal(result.status, 401);
  assert.deepEqual({ refreshes, total, unauthorized }, { refreshes: 1, total: 1, unauthorized: 1 });
  const next = await fetchFelloh(tokend.echoUrl, { method: 'POST', body: stream(), duplex: 'half' });
  assert.equal(next.status, 200);
  assert.equal((await next.json()).body, 'streamed');
});

test('a Request with a body is not retried either (its body is a stream)', async (t) => {
  const fetchFelloh = fellohFetch(t);
  await fetchFelloh(tokend.echoUrl);
  await revoke();
  const { result, refreshes, total } = await moved(() =>
    fetchFelloh(new Request(tokend.echoUrl, { method: 'POST', body: 'in a Request' })),
  );
  assert.equal(result.status, 401);
  assert.deepEqual({ refreshes, total }, { refreshes: 1, total: 1 });
});

test('never more than one retry: an upstream that refuses every token sees two requests', async (t) => {
  const fetchFelloh = fellohFetch(t);
  await sleep(100);
  const { result, denied, refreshes, logins } = await moved(() => fetchFelloh(`${tokend.controlUrl}/deny`));
  assert.equal(result.status, 401);
  assert.deepEqual({ denied, refreshes, logins }, { denied: 2, refreshes: 1, logins: 1 });
});

test('a refresh tokend cannot do is thrown as a TokendError, with no token in it', async (t) => {
  const fetchFelloh = fellohFetch(t);
  const { token } = await new TokendClient({ url: tokend.url }).getCredential('felloh');
  await fetchFelloh(tokend.echoUrl);
  await revoke();
  await tokend.fail('felloh', 503, 1);
  const error = await fetchFelloh(tokend.echoUrl).then(() => assert.fail('expected a TokendError'), (caught) => caught);
  assert.ok(error instanceof TokendError);
  assert.equal(error.code, 'refresh_failed');
  // The upstream works again: the next 401 is answered by a login that succeeds.
  await waitUntil(async () => (await fetchFelloh(tokend.echoUrl)).status === 200, { what: 'a working token again' });
  assert.ok(!error.message.includes(token) && !error.stack.includes(token));
});
