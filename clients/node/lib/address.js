// Where the daemon listens: an explicit option, else $TOKEND_URL, else tokend's default port.
import { TokendError } from './errors.js';

export const DEFAULT_URL = 'http://127.0.0.1:8765';

/**
 * @param {{url?: string, socketPath?: string}} options
 * @param {NodeJS.ProcessEnv} env
 * @returns {{display: string, socketPath?: string, host?: string, port?: number}}
 */
export function resolveAddress(options, env) {
  if (options.socketPath) return { display: `unix:${options.socketPath}`, socketPath: options.socketPath };
  const url = options.url || env.TOKEND_URL || DEFAULT_URL;
  if (url.startsWith('unix:')) {
    // The CLI's spelling: unix:/run/tokend/tokend.sock, or unix:///run/tokend/tokend.sock.
    const socketPath = url.slice('unix:'.length).replace(/^\/\/(?=\/)/, '');
    return { display: `unix:${socketPath}`, socketPath };
  }
  return { display: url.replace(/\/+$/, ''), ...hostAndPort(url) };
}

function hostAndPort(url) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    parsed = null;
  }
  if (parsed === null || parsed.protocol !== 'http:' || !parsed.hostname) {
    // As the tokend command says it: no daemon can be reached at such an address.
    const message = `${JSON.stringify(url)} is not an http:// URL or a unix: socket path of a tokend daemon`;
    throw new TokendError('daemon_unreachable', message);
  }
  // URL keeps IPv6 literals in brackets; node:http wants them bare.
  return { host: parsed.hostname.replace(/^\[(.*)\]$/, '$1'), port: Number(parsed.port || 80) };
}
