/**
 * attachTokend(instance, name): axios interceptors with the same rule as the fetch wrapper. The request
 * interceptor adds the provider's headers and query parameters; the response interceptor answers a 401 with
 * one shared refresh and one retry of a replayable body, marked so that the retry is never retried again.
 *
 * On a redirect that axios follows (its Node http adapter, through follow-redirects), a hop to another origin
 * goes without the provider's headers and query parameters, and a 401 that comes from another origin is not
 * retried. axios's fetch and XHR adapters follow redirects where no hook can see them: use them with
 * `maxRedirects: 0`, or let the provider's API be reached without a redirect.
 */
import { isReplayable } from './replay.js';
import { dropHeaders, dropQuery, originOf } from './scope.js';

const RETRIED = 'tokendRetried'; // a config key: axios keeps it through mergeConfig, a Symbol it drops
const THEIRS = Symbol('the caller\'s own beforeRedirect'); // on our function itself, which axios keeps as is

/**
 * @param {import('./client.js').TokendClient} client
 * @param {string} name
 */
export function interceptors(client, name) {
  const sentWith = new WeakMap(); // request config -> the token it was sent with, and where it went

  async function onRequest(config) {
    const credential = await client.getCredential(name);
    for (const [header, value] of Object.entries(credential.headers)) setHeader(config, header, value);
    const query = Object.entries(credential.query);
    if (query.length > 0) config.params = withQuery(config.params, query);
    const home = originOf(config.url, config.baseURL);
    const sent = { token: credential.token, home, at: home };
    config.beforeRedirect = scoped(sent, credential, config.beforeRedirect);
    sentWith.set(config, sent);
    return config;
  }

  /** The retry's promise, or null when the rule says no retry. */
  async function retry(instance, config, status) {
    const sent = config ? sentWith.get(config) : undefined;
    if (status !== 401 || sent === undefined || config[RETRIED] || sent.at !== sent.home) return null;
    const fresh = await client.replaceRejected(name, sent.token);
    if (fresh === null || !isReplayable(config.data)) return null;
    return instance.request({ ...config, [RETRIED]: true });
  }

  return { onRequest, retry };
}

/** follow-redirects' hook before each hop: the next hop's options, changed in place. */
function scoped(sent, credential, theirs) {
  const caller = theirs?.[THEIRS] !== undefined ? theirs[THEIRS] : theirs;
  function beforeRedirect(options, ...details) {
    sent.at = originOf(options.href);
    if (sent.at !== sent.home) {
      dropHeaders(options.headers, credential);
      const next = dropQuery(new URL(options.href), credential);
      Object.assign(options, { href: next.href, search: next.search, path: next.pathname + next.search });
    }
    if (typeof caller === 'function') caller(options, ...details);
  }
  beforeRedirect[THEIRS] = caller ?? null;
  return beforeRedirect;
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
