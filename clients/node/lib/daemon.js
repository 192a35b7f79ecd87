/**
 * The wire to the daemon: node:http over TCP or a unix socket, one keep-alive agent per client.
 *
 * node:http rather than the global fetch: fetch cannot reach a unix socket without undici's own
 * dispatcher, which is not importable without a dependency.
 */
import { createHash, createHmac, randomBytes } from 'node:crypto';
import http from 'node:http';
import { createRequire } from 'node:module';

import { TokendError } from './errors.js';

// createRequire, not a JSON import: import attributes are spelled differently in Node 18 and 20.
const { version } = createRequire(import.meta.url)('../package.json');

/** @typedef {import('../index.js').Credential} Credential */

export class Daemon {
  /**
   * @param {{display: string, socketPath?: string, host?: string, port?: number}} address
   * @param {{clientKey?: string, timeout: number}} options
   */
  constructor(address, { clientKey, timeout }) {
    this.address = address;
    this.timeout = timeout;
    // Idle keep-alive sockets are unref'd by the agent: they never keep the process alive.
    this.agent = new http.Agent({ keepAlive: true });
    this.headers = { 'x-tokend-request': 'node', accept: 'application/json', 'user-agent': `tokend-client-node/${version}` };
    // The key signs each request and is never sent: whatever listens on the port may not be tokend.
    this.clientKey = clientKey || undefined;
    if (address.socketPath) this.headers.host = 'localhost'; // unchecked on a socket; HTTP/1.1 wants one
  }

  /**
   * The daemon's credential, and its `expires_in` (seconds, null: never): the client times its cache by
   * this, not by `expires_at`, so a clock that differs from the daemon's cannot stretch it.
   * @returns {Promise<{credential: Credential, expiresIn: number | null}>}
   */
  async token(name) {
    return this.#credential(await this.#send('GET', tokenPath(name)), name);
  }

  /** @returns {Promise<{credential: Credential, expiresIn: number | null}>} */
  async refresh(name, rejected) {
    // A plain refresh has no body at all: tokend takes a body to be {"rejected": ...} and nothing else.
    const body = rejected ? { rejected } : undefined;
    return this.#credential(await this.#send('POST', `${tokenPath(name)}/refresh`, body), name);
  }

  close() {
    this.agent.destroy();
  }

  #credential(reply, name) {
    const data = this.#json(reply);
    if (reply.status !== 200) throw this.#failure(reply, data, name);
    if (typeof data?.token !== 'string') {
      throw new TokendError('bad_response', `tokend at ${this.address.display} answered without a token`);
    }
    return { credential: toCredential(name, data), expiresIn: typeof data.expires_in === 'number' ? data.expires_in : null };
  }

  #json(reply) {
    try {
      return JSON.parse(reply.body.toString('utf8'));
    } catch {
      if (reply.status === 200) {
        throw new TokendError('bad_response', `tokend at ${this.address.display} answered with a body that is not JSON`);
      }
      return null;
    }
  }

  #failure(reply, data, name) {
    const code = typeof data?.error === 'string' ? data.error : 'bad_response';
    const message = typeof data?.message === 'string'
      ? data.message
      : `tokend at ${this.address.display} answered ${reply.status}`;
    return new TokendError(code, message, {
      status: reply.status,
      provider: typeof data?.provider === 'string' ? data.provider : name,
      retryAfter: retryAfter(reply.headers['retry-after'], data?.retry_after),
    });
  }

  /** One request; a stale keep-alive socket the daemon closed meanwhile is retried once on a new one. */
  async #send(method, path, body) {
    try {
      return await this.#attempt(method, path, body);
    } catch (error) {
      if (!error.reusedSocket) throw this.#unreachable(error);
      try {
        return await this.#attempt(method, path, body);
      } catch (again) {
        throw this.#unreachable(again);
      }
    }
  }

  #attempt(method, path, body) {
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers = { ...this.headers };
    if (this.clientKey) headers.authorization = signedAuthorization(this.clientKey, method, path);
    if (payload !== null) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
    else if (method === 'POST') headers['content-length'] = 0;
    const { socketPath, host, port } = this.address;
    const target = socketPath ? { socketPath } : { host, port };
    return new Promise((resolve, reject) => {
      const request = http.request({ ...target, method, path, headers, agent: this.agent }, (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('error', reject);
        response.on('end', () => resolve({ status: response.statusCode, headers: response.headers, body: Buffer.concat(chunks) }));
      });
      const timer = setTimeout(() => request.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })), this.timeout);
      request.on('close', () => clearTimeout(timer));
      request.on('error', (error) => {
        // Only a reset before any answer on a reused socket is the keep-alive race worth a second try.
        error.reusedSocket = request.reusedSocket && error.code === 'ECONNRESET';
        reject(error);
      });
      request.end(payload);
    });
  }

  #unreachable(error) {
    if (error instanceof TokendError) return error;
    const where = this.address.display;
    const reasons = {
      ECONNREFUSED: 'connection refused; is `tokend run` running?',
      ENOENT: 'no such socket; is `tokend run` running?',
      ETIMEDOUT: `no answer within ${this.timeout / 1000} s`,
      EACCES: 'permission denied on the socket',
    };
    const reason = reasons[error.code] ?? (error.code || error.message);
    return new TokendError('daemon_unreachable', `cannot reach tokend at ${where} (${reason})`, { cause: error });
  }
}

/**
 * `Authorization: Tokend-HMAC client=<key id>, ts=<unix s>, nonce=<random>, sig=<signature>`: key id the
 * first 8 bytes of SHA-256(key) in hex, sig base64url of HMAC-SHA256(key, "METHOD\npath?query\nts\nnonce").
 * tokend takes each nonce once, within 30 s, so a signature caught by an impostor is worth little.
 */
function signedAuthorization(key, method, target) {
  const ts = String(Math.floor(Date.now() / 1000));
  const nonce = randomBytes(16).toString('base64url');
  const sig = createHmac('sha256', key).update(`${method}\n${target}\n${ts}\n${nonce}`).digest('base64url');
  const client = createHash('sha256').update(key).digest().subarray(0, 8).toString('hex');
  return `Tokend-HMAC client=${client}, ts=${ts}, nonce=${nonce}, sig=${sig}`;
}

function tokenPath(name) {
  if (typeof name !== 'string' || name === '') throw new TypeError('the provider name must be a non-empty string');
  return `/token/${encodeURIComponent(name)}`;
}

function retryAfter(header, field) {
  const seconds = Number(header ?? field);
  return header === undefined && field === undefined ? null : Number.isFinite(seconds) ? seconds : null;
}

/** The daemon's JSON answer as the client hands it out: frozen, because every caller shares it. */
function toCredential(name, data) {
  return Object.freeze({
    provider: typeof data.provider === 'string' ? data.provider : name,
    token: data.token,
    tokenType: data.token_type ?? null,
    headers: Object.freeze({ ...(data.headers ?? {}) }),
    query: Object.freeze({ ...(data.query ?? {}) }),
    expiresAt: data.expires_at ? new Date(data.expires_at) : null,
  });
}
