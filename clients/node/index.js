/**
 * tokend-client: tokens from a local tokend daemon for Node programs.
 *
 *     import { tokendFetch } from 'tokend-client';
 *     const fellohFetch = tokendFetch('felloh');
 *     const response = await fellohFetch('https://api.felloh.com/agent/organisations');
 *
 * Nothing happens at import: the default client reads $TOKEND_URL and $TOKEND_CLIENT_KEY on first use.
 */
import { interceptors } from './lib/axios.js';
import { TokendClient } from './lib/client.js';
import { TokendError } from './lib/errors.js';
import { wrapFetch } from './lib/fetch.js';

export { TokendClient, TokendError };

const CONNECTION_OPTIONS = ['url', 'socketPath', 'clientKey', 'clientKeyFile', 'timeout'];
let defaultClient = null;
const clients = new Map(); // one client per distinct connection options, so they share cache and refreshes

/** The client that `options` name: `options.client`, else one per connection options, else the default. */
export function clientFor(options = {}) {
  if (options.client) return options.client;
  const given = CONNECTION_OPTIONS.map((option) => options[option]);
  if (given.every((value) => value === undefined)) return (defaultClient ??= new TokendClient());
  const key = JSON.stringify(given);
  let client = clients.get(key);
  if (client === undefined) clients.set(key, (client = new TokendClient(options)));
  return client;
}

/** The provider's credential: {provider, token, tokenType, headers, query, expiresAt}. */
export async function getCredential(name, options) {
  return clientFor(options).getCredential(name); // async: a bad $TOKEND_URL rejects, as every other failure
}

/** Force a new login; with `rejected`, only if tokend still holds that token (see TokendClient.refresh). */
export async function refresh(name, options = {}) {
  return clientFor(options).refresh(name, { rejected: options.rejected });
}

/** A fetch-compatible function that authenticates every request as provider `name`. */
export function tokendFetch(name, options = {}) {
  return wrapFetch(clientFor(options), name, options.fetch ?? globalThis.fetch);
}

/**
 * Authenticate every request of an axios instance as provider `name`. Returns a function that removes the
 * interceptors again.
 */
export function attachTokend(instance, name, options = {}) {
  const { onRequest, retry } = interceptors(clientFor(options), name);
  const requestId = instance.interceptors.request.use(onRequest);
  const responseId = instance.interceptors.response.use(
    // A validateStatus that lets a 401 through gets the same rule as one that throws it.
    async (response) => (await retry(instance, response.config, response.status)) ?? response,
    async (error) => {
      const retried = await retry(instance, error?.config, error?.response?.status);
      if (retried === null) throw error;
      return retried;
    },
  );
  return () => {
    instance.interceptors.request.eject(requestId);
    instance.interceptors.response.eject(responseId);
  };
}
