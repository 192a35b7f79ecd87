// A credential goes only to the origin of the request it was added to: origin A redirects to origin B (another
// port), and B, which records what it got, must see none of the provider's headers or query parameters, nor a
// retry after its 401 (and no login is spent on it). The fetch wrapper and the axios interceptor.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';

import axios from 'axios';

import { TokendClient, attachTokend, tokendFetch } from '../index.js';
import { startTokend } from './harness.mjs';

let tokend;
let a;
let b;
before(async () => {
  tokend = await startTokend();
  b = await origin((request, response) => response.writeHead(401).end('{"error":"invalid_token"}'));
  a = await origin((request, response) => {
    const url = new URL(request.url, 'http://a');
    const to = url.pathname.startsWith('/elsewhere/') ? b.url : url.pathname.startsWith('/here/') ? a.url : null;
    if (to === null) return response.writeHead(200).end('{"ok":true}');
    // As nginx's `return 302 https://other/landed$request_uri`: the request's own query goes along.
    response.writeHead(302, { location: `${to}/landed${request.url}` }).end();
  });
});
after(async () => {
  await Promise.all([a?.close(), b?.close()]);
  await tokend?.stop();
});

/** A server on 127.0.0.1 and a free port that records every request it gets. */
function origin(answer) {
  const seen = [];
  const server = http.createServer((request, response) => {
    seen.push({ url: request.url, headers: request.headers });
    answer(request, response);
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `http://127.0.0.1:${server.address().port}`,
    seen,
    close: () => new Promise((done) => server.close(done)),
  })));
}

function wrappers(t) {
  const client = new TokendClient({ url: tokend.url });
  t.after(() => client.close());
  return {
    client,
    fetch: async (name, url) => (await tokendFetch(name, { client })(url)).status,
    axios: async (name, url) => {
      const instance = axios.create({ validateStatus: () => true });
      attachTokend(instance, name, { client });
      return (await instance.get(url)).status;
    },
  };
}

for (const wrapper of ['fetch', 'axios']) {
  test(`${wrapper}: a redirect to another origin carries no header nor query of the provider`, async (t) => {
    const { client, [wrapper]: send } = wrappers(t);
    a.seen.length = 0;
    b.seen.length = 0;
    const key = (await client.getCredential('flotiq')).token;
    const fts = await client.getCredential('fts');
    assert.equal(await send('flotiq', `${a.url}/elsewhere/report?page=2`), 401);
    assert.equal(await send('fts', `${a.url}/elsewhere/report`), 401);
    assert.equal(a.seen[0].headers['x-auth-token'], key);
    assert.match(a.seen[0].url, /auth_token=/);
    assert.equal(a.seen[1].headers['x-api-key'], fts.headers['x-api-key']);
    assert.deepEqual(b.seen.map((seen) => seen.url), ['/landed/elsewhere/report?page=2', '/landed/elsewhere/report']);
    for (const seen of b.seen) {
      const everything = JSON.stringify(seen);
      for (const secret of [key, fts.token, fts.headers['x-api-key']]) assert.ok(!everything.includes(secret));
      for (const header of ['x-auth-token', 'x-api-key', 'authorization']) assert.equal(seen.headers[header], undefined);
    }
  });

  test(`${wrapper}: a 401 from another origin spends no login and gets no token`, async (t) => {
    const { client, [wrapper]: send } = wrappers(t);
    await client.getCredential('felloh');
    b.seen.length = 0;
    const logins = (await tokend.counts()).felloh.logins;
    assert.equal(await send('felloh', `${a.url}/elsewhere/bookings`), 401);
    assert.equal((await tokend.counts()).felloh.logins, logins);
    assert.equal(b.seen.length, 1);
    assert.equal(b.seen[0].headers.authorization, undefined);
  });

  test(`${wrapper}: a redirect within the origin keeps the credential`, async (t) => {
    const { client, [wrapper]: send } = wrappers(t);
    a.seen.length = 0;
    assert.equal(await send('felloh', `${a.url}/here/x`), 200);
    const { headers } = await client.getCredential('felloh');
    assert.deepEqual(a.seen.map((seen) => [seen.url, seen.headers.authorization]),
      [['/here/x', headers.Authorization], ['/landed/here/x', headers.Authorization]]);
  });
}
