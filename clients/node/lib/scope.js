/**
 * A credential belongs to the origin (scheme, host, port) of the request it was added to. A redirect to
 * another origin is followed without it: the provider's headers and query parameters are taken off (the
 * HTTP libraries' own rule takes off only Authorization, while a key may travel in X-AUTH-TOKEN, x-api-key
 * or the query string), and a 401 from another origin is that origin's answer, never retried with a new token.
 */

/** The origin of `url` (a string or URL), or null when it has none (a relative or malformed URL). */
export function originOf(url, base) {
  try {
    return new URL(String(url), base).origin;
  } catch {
    return null;
  }
}

/** Removes the credential's headers from a Headers or a plain object, whatever the case of their names. */
export function dropHeaders(headers, credential) {
  const names = new Set(Object.keys(credential.headers).map((name) => name.toLowerCase()));
  if (typeof headers?.delete === 'function') {
    for (const name of names) headers.delete(name);
    return;
  }
  for (const name of Object.keys(headers ?? {})) {
    if (names.has(name.toLowerCase())) delete headers[name];
  }
}

/** `url` (a URL, changed in place) without the credential's query parameters. */
export function dropQuery(url, credential) {
  for (const parameter of Object.keys(credential.query)) url.searchParams.delete(parameter);
  return url;
}
