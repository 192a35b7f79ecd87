/**
 * TokendClient: one daemon, the credentials it served, and the refreshes under way.
 *
 * A credential is kept in the process until shortly before it expires, so a request through the wrappers
 * costs no round trip to the daemon. When an upstream refuses a token, all callers holding it share one
 * forced refresh that names it (`{"rejected": token}`), so a burst of 401s costs the provider one login.
 */
import { readFileSync } from 'node:fs';

import { resolveAddress } from './address.js';
import { Daemon } from './daemon.js';
import { TokendError } from './errors.js';

// A cached credential is handed out until this close to its expiry, then read again: a tenth of the time it
// had left when it was read, at least a second (a token closer to its expiry could die on its way upstream,
// which is why tokend itself stops serving it then) and at most 30 seconds. The daemon renews well before
// that, so the read brings the next token.
const MIN_MARGIN_MS = 1_000;
const MAX_MARGIN_MS = 30_000;
// A credential with no expiry (a static API key) is read again this often, so a key rotated in tokend's
// config reaches the process even without a 401.
const NO_EXPIRY_RECHECK_MS = 5 * 60_000;
const DEFAULT_TIMEOUT_MS = 15_000; // a forced refresh waits for a login, itself bounded at 10 s by default

export class TokendClient {
  #daemon;
  #cache = new Map(); // name -> {credential, freshUntil}
  #reads = new Map(); // name -> the GET in flight
  #refreshes = new Map(); // name + NUL + rejected token -> the refresh in flight
  #rejected = new Map(); // name -> the token last refreshed away, never cached again

  /** @param {import('../index.js').ClientOptions} [options] */
  constructor(options = {}, env = process.env) {
    const address = resolveAddress(options, env);
    // An empty key is no key, as an empty $TOKEND_CLIENT_KEY is for the tokend command.
    const clientKey = options.clientKey || keyFromFile(options.clientKeyFile) || env.TOKEND_CLIENT_KEY || undefined;
    if (clientKey !== undefined && !/^[\x21-\x7e][\x20-\x7e]*$/.test(clientKey)) {
      throw new TokendError('bad_client_key', 'the client key must be one line of printable ASCII text');
    }
    this.#daemon = new Daemon(address, { clientKey, timeout: options.timeout ?? DEFAULT_TIMEOUT_MS });
    /** Where the daemon is, for messages (never holds the key). */
    this.url = address.display;
  }

  /** The provider's credential: from the cache while fresh, else one GET shared by concurrent callers. */
  async getCredential(name) {
    const cached = this.#cache.get(name);
    if (cached !== undefined && Date.now() < cached.freshUntil) return cached.credential;
    let read = this.#reads.get(name);
    if (read === undefined) {
      read = this.#daemon.token(name)
        .then((answer) => this.#keep(name, answer, { fromRefresh: false }))
        .finally(() => this.#reads.delete(name));
      this.#reads.set(name, read);
    }
    return read;
  }

  /**
   * Force a new login (POST /token/NAME/refresh). With `rejected`, the token an upstream refused: tokend
   * logs in only if it still holds that token; every concurrent call naming the same token shares one request.
   */
  async refresh(name, { rejected } = {}) {
    const key = `${name}\u0000${rejected ?? ''}`;
    let flight = this.#refreshes.get(key);
    if (flight === undefined) {
      if (rejected) this.#rejected.set(name, rejected);
      flight = this.#daemon.refresh(name, rejected)
        .then((answer) => this.#keep(name, answer, { fromRefresh: true }))
        .finally(() => this.#refreshes.delete(key));
      this.#refreshes.set(key, flight);
    }
    return flight;
  }

  /**
   * What to send instead of `rejected`, a token an upstream answered 401 to: the cached credential if it
   * already differs (another caller refreshed meanwhile), else the result of the one shared refresh naming
   * it; null when tokend has nothing newer (the retry would be refused again).
   */
  async replaceRejected(name, rejected) {
    const cached = this.#cache.get(name);
    if (cached !== undefined && cached.credential.token !== rejected && Date.now() < cached.freshUntil) {
      return cached.credential;
    }
    const credential = await this.refresh(name, { rejected });
    return credential.token === rejected ? null : credential;
  }

  /** Forget every cached credential (the next call reads from the daemon). */
  clear() {
    this.#cache.clear();
  }

  /** Close the idle keep-alive connections to the daemon. */
  close() {
    this.#daemon.close();
  }

  #keep(name, { credential, expiresIn }, { fromRefresh }) {
    // A GET answered just before a refresh landed may bring back the token the refresh replaced.
    if (fromRefresh || credential.token !== this.#rejected.get(name)) {
      this.#cache.set(name, { credential, freshUntil: freshUntil(expiresIn) });
    }
    return credential;
  }
}

function freshUntil(expiresIn) {
  const now = Date.now();
  if (expiresIn === null) return now + NO_EXPIRY_RECHECK_MS;
  const left = expiresIn * 1000;
  return now + left - Math.min(MAX_MARGIN_MS, Math.max(MIN_MARGIN_MS, left / 10));
}

function keyFromFile(path) {
  if (!path) return undefined;
  try {
    return readFileSync(path, 'utf8').replace(/\r?\n$/, '');
  } catch (error) {
    // The path is not a secret; the error's code says what is wrong without the content.
    throw new TokendError('bad_client_key', `the client key file ${path} cannot be read (${error.code})`);
  }
}
