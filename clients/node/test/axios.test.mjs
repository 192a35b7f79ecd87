// The axios interceptor against the real daemon and the fake upstreams: the same rule as the fetch wrapper.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import axios from 'axios';

import { TokendClient, TokendError, attachTokend } from '../index.js';
import { startTokend, waitUntil } from './harness.mjs';

const REFRESHES = { route: '/token/{name}/refresh', status: '200' };

let tokend;
before(async () => {
  tokend = await startTokend();
});
after(() => tokend?.stop());

/** An axios instance with the interceptor and a client of its own (no cached token from another test). */
function fellohAxios(t, config = {}) {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  const instance = axios.create(config);
  attachTokend(instance, 'felloh', { client });
  return instance;
}

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

// Past min_refresh_interval (0.05 s here) since the last forced login: see fetch.test.mjs.
async function revoke() {
  await sleep(100);
  await tokend.revoke('felloh');
}

test('adds the provider headers, keeps the caller\'s own, and reaches the upstream', async (t) => {
  const felloh = fellohAxios(t, { baseURL: tokend.fellohUrl });
  const response = await felloh.get('/agent/organisations', { headers: { 'x-trace': 'abc' } });
  assert.equal(response.status, 200);
  assert.equal(response.data.data[0].name, 'Demo Travel Ltd');
  const echoed = (await felloh.get(`${tokend.controlUrl}/open-echo`, { headers: { 'x-trace': 'abc' } })).data;
  assert.match(echoed.headers.authorization, /^Bearer .{100,}$/);
  assert.equal(echoed.headers['x-trace'], 'abc');
});

test('the README\'s Felloh example: list the organisation\'s API keys', async (t) => {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  // As in README.md, with the fake's base URL for https://api.felloh.com and this test's client.
  const felloh = axios.create({ baseURL: tokend.fellohUrl });
  attachTokend(felloh, 'felloh', { client });
  const response = await felloh.post('/token/keys', { organisation: 'X9876' });
  assert.equal(response.status, 200);
  assert.equal(response.data.data[0].name, 'dashboard key');
  assert.ok(response.data.meta.request_id);
});

test('adds the provider query parameters to the caller\'s params, objects and URLSearchParams alike', async (t) => {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  const flotiq = axios.create();
  attachTokend(flotiq, 'flotiq', { client });
  for (const params of [{ page: 2 }, new URLSearchParams({ page: '2' })]) {
    const echoed = (await flotiq.get(`${tokend.controlUrl}/open-echo`, { params })).data;
    assert.deepEqual(echoed.query, { page: ['2'], auth_token: ['demo-flotiq-read-only-key'] });
    assert.equal(echoed.headers['x-auth-token'], 'demo-flotiq-read-only-key');
  }
});

test('a revoked token: one refresh, one login, one retry, and the caller sees the 200', async (t) => {
  const felloh = fellohAxios(t);
  await felloh.get(tokend.echoUrl);
  await revoke();
  const { result, logins, refreshes, total, unauthorized } = await moved(() =>
    felloh.post(tokend.echoUrl, { organisation: 'X9876' }),
  );
  assert.equal(result.status, 200);
  assert.deepEqual(JSON.parse(result.data.body), { organisation: 'X9876' });
  assert.deepEqual({ logins, refreshes, total, unauthorized }, { logins: 1, refreshes: 1, total: 2, unauthorized: 1 });
});

test('50 concurrent 401s cost one refresh and one login, and all 50 requests succeed', async (t) => {
  const felloh = fellohAxios(t);
  await felloh.get(tokend.echoUrl);
  await revoke();
  const { result, logins, refreshes, total, unauthorized } = await moved(() =>
    Promise.all(Array.from({ length: 50 }, (_, i) => felloh.post(tokend.echoUrl, { request: i }))),
  );
  assert.deepEqual(result.map((response) => response.status), Array(50).fill(200));
  assert.deepEqual(result.map((response) => JSON.parse(response.data.body).request), Array.from({ length: 50 }, (_, i) => i));
  assert.deepEqual({ logins, refreshes, total, unauthorized }, { logins: 1, refreshes: 1, total: 100, unauthorized: 50 });
});

test('replayable bodies are sent again as they were: string, Buffer, URLSearchParams', async (t) => {
  const felloh = fellohAxios(t);
  for (const [data, expected] of [['plain text', 'plain text'], [Buffer.from('bytes'), 'bytes'], [new URLSearchParams({ q: 'x y' }), 'q=x+y']]) {
    await felloh.get(tokend.echoUrl);
    await revoke();
    const { result, refreshes, unauthorized } = await moved(() => felloh.put(tokend.echoUrl, data));
    assert.equal(result.status, 200, `${data.constructor.name} body`);
    assert.equal(result.data.body, expected);
    assert.deepEqual({ refreshes, unauthorized }, { refreshes: 1, unauthorized: 1 });
  }
});

test('a stream body is not retried: the 401 is thrown as axios throws it, and the next request works', async (t) => {
  const felloh = fellohAxios(t);
  await felloh.get(tokend.echoUrl);
  await revoke();
  const { result, refreshes, total } = await moved(() =>
    felloh.post(tokend.echoUrl, Readable.from(['streamed'])).then(() => assert.fail('expected a 401'), (error) => error),
  );
  assert.ok(axios.isAxiosError(result));
  assert.equal(result.response.status, 401);
  assert.deepEqual({ refreshes, total }, { refreshes: 1, total: 1 });
  const next = await felloh.post(tokend.echoUrl, Readable.from(['streamed']));
  assert.equal(next.data.body, 'streamed');
});

test('never more than one retry, whether axios throws the 401 or validateStatus lets it through', async (t) => {
  for (const config of [{}, { validateStatus: () => true }]) {
    const felloh = fellohAxios(t, config);
    await sleep(100);
    const { result, denied, refreshes } = await moved(() =>
      felloh.get(`${tokend.controlUrl}/deny`).then((response) => response, (error) => error.response),
    );
    assert.equal(result.status, 401);
    assert.deepEqual({ denied, refreshes }, { denied: 2, refreshes: 1 });
  }
});

test('a refresh tokend cannot do rejects with a TokendError', async (t) => {
  const felloh = fellohAxios(t);
  await felloh.get(tokend.echoUrl);
  await revoke();
  await tokend.fail('felloh', 503, 1);
  const error = await felloh.get(tokend.echoUrl).then(() => assert.fail('expected a TokendError'), (caught) => caught);
  assert.ok(error instanceof TokendError);
  assert.equal(error.code, 'refresh_failed');
  // The upstream works again: the next 401 is answered by a login that succeeds.
  await waitUntil(async () => (await felloh.get(tokend.echoUrl)).status === 200, { what: 'a working token again' });
});

test('the returned function takes the interceptors off again', async (t) => {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  const instance = axios.create({ validateStatus: () => true });
  const detach = attachTokend(instance, 'felloh', { client });
  assert.equal((await instance.get(tokend.echoUrl)).status, 200);
  detach();
  assert.equal((await instance.get(tokend.echoUrl)).status, 401);
});
