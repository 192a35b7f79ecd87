/**
 * attachTokend(instance, name): axios interceptors with the same rule as the fetch wrapper. The request
 * interceptor adds the provider's headers and query parameters; the response interceptor answers a 401 with
 * one shared refresh and one retry of a replayable body, marked so that the retry is never retried again.
 */
import { isReplayable } from './replay.js';

const RETRIED = 'tokendRetried'; // a config key: axios keeps it through mergeConfig, a Symbol it drops

/**
 * @param {import('./client.js').TokendClient} client
 * @param {string} name
 */
export function interceptors(client, name) {
  const sentWith = new WeakMap(); // request config -> the token it was sent with

  async function onRequest(config) {
    const credential = await client.getCredential(name);
    for (const [header, value] of Object.entries(credential.headers)) setHeader(config, header, value);
    const query = Object.entries(credential.query);
    if (query.length > 0) config.params = withQuery(config.params, query);
    sentWith.set(config, credential.token);
    return config;
  }

  /** The retry's promise, or null when the rule says no retry. */
  async function retry(instance, config, status) {
    const token = config ? sentWith.get(config) : undefined;
    if (status !== 401 || token === undefined || config[RETRIED]) return null;
    const fresh = await client.replaceRejected(name, token);
    if (fresh === null || !isReplayable(config.data)) return null;
    return instance.request({ ...config, [RETRIED]: true });
  }

  return { onRequest, retry };
}

function setHeader(config, header, value) {
  if (typeof config.headers?.set === 'function') {
    config.headers.set(header, value); // AxiosHeaders (axios 1.x): case-insensitive
  } else {
    config.headers = { ...config.headers, [header]: value };
  }
}

function withQuery(params, query) {
  if (params instanceof URLSearchParams) {
    const copy = new URLSearchParams(params);
    for (const [parameter, value] of query) copy.set(parameter, value);
    return copy;
  }
  return { ...params, ...Object.fromEntries(query) };
}
