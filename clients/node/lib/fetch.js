/**
 * tokendFetch(name): a fetch-compatible function that adds the provider's headers and query parameters,
 * and on a 401 asks tokend once for a new token (shared by every concurrent 401 of the process) and sends
 * the request once more if its body can be replayed. Never more than one retry.
 *
 * Redirects are followed here rather than by fetch (which would carry every header but Authorization to
 * another origin): a hop to another origin goes without the provider's headers and query parameters, and a
 * 401 that comes from another origin is returned as it is. A caller's `redirect: 'manual'` or `'error'` is
 * passed on to fetch unchanged.
 */
import { isReplayable } from './replay.js';
import { dropHeaders, dropQuery, originOf } from './scope.js';

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 20; // as fetch's own limit
const BODY_HEADERS = ['content-encoding', 'content-language', 'content-location', 'content-type', 'content-length'];

/**
 * @param {import('./client.js').TokendClient} client
 * @param {string} name
 * @param {typeof fetch} baseFetch
 */
export function wrapFetch(client, name, baseFetch) {
  return async function tokendFetch(input, init) {
    const credential = await client.getCredential(name);
    const { response, atHome } = await send(baseFetch, input, init, credential);
    if (response.status !== 401 || !atHome) return response;
    let fresh;
    try {
      fresh = await client.replaceRejected(name, credential.token);
    } catch (error) {
      await discard(response);
      throw error;
    }
    if (fresh === null || !isReplayable(bodyOf(input, init))) return response;
    await discard(response);
    return (await send(baseFetch, input, init, fresh)).response;
  };
}

/** The request with `credential`, its redirects followed; `atHome`: the answer came from the first origin. */
async function send(baseFetch, input, init, credential) {
  const [target, options] = authorize(input, init, credential);
  const home = originOf(target instanceof Request ? target.url : target);
  if (init?.redirect === 'manual' || init?.redirect === 'error') {
    return { response: await baseFetch(target, options), atHome: true };
  }
  let response = await baseFetch(target, { ...options, redirect: 'manual' });
  let url = new URL(target instanceof Request ? target.url : target);
  let method = (options.method ?? (target instanceof Request ? target.method : 'GET')).toUpperCase();
  let body = bodyOf(input, init);
  const headers = new Headers(options.headers);
  for (let hops = 0; REDIRECTS.has(response.status) && response.headers.has('location'); hops += 1) {
    if (hops === MAX_REDIRECTS) {
      await discard(response);
      throw new TypeError(`fetch failed: more than ${MAX_REDIRECTS} redirects`);
    }
    const next = new URL(response.headers.get('location'), url);
    if (response.status === 303 ? !['GET', 'HEAD'].includes(method) : response.status <= 302 && method === 'POST') {
      method = 'GET';
      body = undefined;
      for (const header of BODY_HEADERS) headers.delete(header);
    } else if (!isReplayable(body)) {
      break; // a stream cannot be sent again to the next hop: its redirect is the answer
    }
    if (next.origin !== home) {
      dropHeaders(headers, credential);
      dropQuery(next, credential);
    }
    await discard(response);
    url = next;
    response = await baseFetch(url, { ...options, method, headers, body, redirect: 'manual' });
  }
  return { response, atHome: url.origin === home };
}

/** Free the connection of a response nobody will read. */
async function discard(response) {
  await response.body?.cancel().catch(() => {});
}

function bodyOf(input, init) {
  if (init?.body !== undefined) return init.body;
  // A Request's own body is a stream, whatever it was made from.
  return input instanceof Request ? input.body ?? undefined : undefined;
}

/** The arguments for the underlying fetch: the caller's, with the credential's headers and query added. */
function authorize(input, init, credential) {
  const isRequest = input instanceof Request;
  const headers = new Headers(init?.headers ?? (isRequest ? input.headers : undefined));
  for (const [header, value] of Object.entries(credential.headers)) headers.set(header, value);
  const query = Object.entries(credential.query);
  if (query.length === 0) return [input, { ...init, headers }];
  const url = new URL(isRequest ? input.url : input instanceof URL ? input.href : String(input));
  for (const [parameter, value] of query) url.searchParams.set(parameter, value);
  // A Request's URL cannot be changed, so it is copied onto the new URL with all its other settings.
  return [isRequest ? new Request(url, input) : url, { ...init, headers }];
}
