/**
 * tokendFetch(name): a fetch-compatible function that adds the provider's headers and query parameters,
 * and on a 401 asks tokend once for a new token (shared by every concurrent 401 of the process) and sends
 * the request once more if its body can be replayed. Never more than one retry.
 */
import { isReplayable } from './replay.js';

/**
 * @param {import('./client.js').TokendClient} client
 * @param {string} name
 * @param {typeof fetch} baseFetch
 */
export function wrapFetch(client, name, baseFetch) {
  return async function tokendFetch(input, init) {
    const credential = await client.getCredential(name);
    const response = await baseFetch(...authorize(input, init, credential));
    if (response.status !== 401) return response;
    let fresh;
    try {
      fresh = await client.replaceRejected(name, credential.token);
    } catch (error) {
      await discard(response);
      throw error;
    }
    if (fresh === null || !isReplayable(bodyOf(input, init))) return response;
    await discard(response);
    return baseFetch(...authorize(input, init, fresh));
  };
}

/** Free the connection of a 401 nobody will read. */
async function discard(response) {
  await response.body?.cancel().catch(() => {});
}

function bodyOf(input, init) {
  if (init?.body !== undefined) return init.body;
  // A Request's own body is a stream, whatever it was made from.
  return input instanceof Request ? input.body : undefined;
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
