/**
 * Whether a request body can be sent a second time. Strings, buffers, typed arrays, URLSearchParams, Blob
 * and FormData can: they are values. A stream (Node's Readable, a web ReadableStream, an async iterable)
 * has been consumed by the first attempt, so a request carrying one is never retried: its 401 is returned.
 */
export function isReplayable(body) {
  if (body === undefined || body === null || typeof body !== 'object') return true;
  if (typeof body.pipe === 'function' || typeof body.getReader === 'function') return false;
  return typeof body[Symbol.asyncIterator] !== 'function';
}
