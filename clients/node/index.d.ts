// Type declarations for tokend-client (hand-written; the package is plain ESM JavaScript).

/** What tokend serves for a provider: exactly what to add to the upstream request. */
export interface Credential {
  /** The provider's name in tokend's config. */
  readonly provider: string;
  /** The token itself (for a static key: the key). */
  readonly token: string;
  /** "Bearer", "api_key", ...; null when tokend does not say. */
  readonly tokenType: string | null;
  /** The headers to send upstream, e.g. {Authorization: "Bearer ..."}. */
  readonly headers: Readonly<Record<string, string>>;
  /** The query parameters to send upstream (Flotiq: {auth_token: key}); usually empty. */
  readonly query: Readonly<Record<string, string>>;
  /** When the token expires; null for a key that does not expire. */
  readonly expiresAt: Date | null;
}

/** How to reach the daemon. Without any of these, $TOKEND_URL and $TOKEND_CLIENT_KEY are read on first use. */
export interface ClientOptions {
  /** `http://127.0.0.1:8765` (the default), or `unix:/path/to/tokend.sock`. Default: $TOKEND_URL. */
  url?: string;
  /** The daemon's unix socket; wins over `url`. */
  socketPath?: string;
  /** The client key, sent as `Authorization: Bearer <key>`. Default: $TOKEND_CLIENT_KEY. */
  clientKey?: string;
  /** A file holding the client key (one trailing newline is ignored). */
  clientKeyFile?: string;
  /** Milliseconds to wait for the daemon's answer (a forced refresh waits for a login). Default 15000. */
  timeout?: number;
}

/** Which client a function uses: `client`, else one per distinct connection options, else the default one. */
export interface UseClient extends ClientOptions {
  client?: TokendClient;
}

export type TokendErrorCode =
  | 'unknown_provider'
  | 'token_unavailable'
  | 'refresh_throttled'
  | 'refresh_failed'
  | 'unauthorized'
  | 'forbidden'
  | 'daemon_unreachable'
  | 'bad_response'
  | 'bad_client_key'
  | (string & {});

/** Every failure of the client. Its message never holds a token or a client key. */
export class TokendError extends Error {
  constructor(
    code: TokendErrorCode,
    message: string,
    details?: { status?: number | null; provider?: string | null; retryAfter?: number | null; cause?: unknown },
  );
  readonly name: 'TokendError';
  /** tokend's error code (from the daemon's answer), or one of the client's own. */
  readonly code: TokendErrorCode;
  /** The daemon's HTTP status; null when there was no answer. */
  readonly status: number | null;
  readonly provider: string | null;
  /** Seconds to wait before asking again (refresh_throttled); else null. */
  readonly retryAfter: number | null;
}

/** One daemon: a keep-alive connection, the credentials it served (cached), and the refreshes under way. */
export class TokendClient {
  constructor(options?: ClientOptions, env?: Record<string, string | undefined>);
  /** Where the daemon is (for messages). */
  readonly url: string;
  /** From the cache while fresh (until shortly before expiry), else one GET shared by concurrent callers. */
  getCredential(name: string): Promise<Credential>;
  /** POST /token/NAME/refresh; with `rejected`, concurrent calls naming the same token share one request. */
  refresh(name: string, options?: { rejected?: string }): Promise<Credential>;
  /**
   * The credential to use instead of `rejected` (a token an upstream answered 401 to): the cached one if it
   * already differs, else the one shared refresh naming it; null when tokend has nothing newer.
   */
  replaceRejected(name: string, rejected: string): Promise<Credential | null>;
  /** Forget the cached credentials. */
  clear(): void;
  /** Close idle connections to the daemon (they never keep the process alive anyway). */
  close(): void;
}

/** The client `options` select (see UseClient). */
export function clientFor(options?: UseClient): TokendClient;

/** The provider's credential, cached in the process until shortly before it expires. */
export function getCredential(name: string, options?: UseClient): Promise<Credential>;

/** Force a new login; with `rejected`, tokend logs in only if that is still its token. */
export function refresh(name: string, options?: UseClient & { rejected?: string }): Promise<Credential>;

/** The fetch signature the wrapper takes and returns (the global fetch's). */
export type Fetch = (input: string | URL | Request, init?: RequestInit) => Promise<Response>;

/**
 * A fetch that adds the provider's headers and query to each request. On a 401: one refresh shared by every
 * concurrent 401 of the process, then one retry if the body can be replayed (not a stream); else the 401.
 */
export function tokendFetch(name: string, options?: UseClient & { fetch?: Fetch }): Fetch;

/** The part of an axios instance the interceptors need (structural: axios itself is not a dependency). */
export interface AxiosLike {
  interceptors: {
    request: { use(onFulfilled: (config: any) => any): number; eject(id: number): void };
    response: {
      use(onFulfilled: (response: any) => any, onRejected: (error: any) => any): number;
      eject(id: number): void;
    };
  };
  request(config: any): Promise<any>;
}

/**
 * Interceptors on an axios instance with the fetch wrapper's rule. Returns a function that removes them.
 */
export function attachTokend(instance: AxiosLike, name: string, options?: UseClient): () => void;
