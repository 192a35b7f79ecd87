/**
 * The one error class of the client: every failure carries tokend's error `code`.
 *
 * Codes from the daemon: unknown_provider (404), token_unavailable (503), refresh_throttled (429, with
 * `retryAfter`), refresh_failed (502), unauthorized (401, the client key), forbidden (403), and any other
 * code a newer daemon sends. Codes of the client itself: daemon_unreachable (no answer at all),
 * bad_response (an answer that is not tokend's), bad_client_key (a key that cannot be sent in a header).
 *
 * A message is a sentence for a person: the daemon's own (which never holds a secret) or the client's,
 * which never includes a token or a client key either.
 */
export class TokendError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{status?: number | null, provider?: string | null, retryAfter?: number | null, cause?: unknown}} [details]
   */
  constructor(code, message, { status = null, provider = null, retryAfter = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'TokendError';
    this.code = code;
    this.status = status;
    this.provider = provider;
    this.retryAfter = retryAfter;
  }
}
