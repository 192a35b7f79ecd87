// Starts the fake upstreams (test/fakes.py) and the real tokend daemon for a test file, and stops them.
import { spawn, spawnSync } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const FAKES = fileURLToPath(new URL('./fakes.py', import.meta.url));

/** The Python with tokend installed: $TOKEND_PYTHON, else python3 or python on PATH (CI's venv). */
function python() {
  const candidates = process.env.TOKEND_PYTHON ? [process.env.TOKEND_PYTHON] : ['python3', 'python'];
  for (const candidate of candidates) {
    if (spawnSync(candidate, ['-c', 'import tokend.testing'], { stdio: 'ignore' }).status === 0) return candidate;
  }
  throw new Error(`no Python with tokend installed among ${candidates.join(', ')}; set TOKEND_PYTHON`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

function firstLine(stream) {
  return new Promise((resolve, reject) => {
    let text = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      text += chunk;
      if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')));
    });
    stream.on('end', () => reject(new Error(`test/fakes.py ended before printing its URLs: ${text}`)));
  });
}

/** A plain request to the daemon (its own checks' header included), for readiness and /metrics. */
export function daemonRequest(target, path) {
  return new Promise((resolve, reject) => {
    const headers = { 'x-tokend-request': 'test', ...(target.socketPath ? { host: 'localhost' } : {}) };
    const request = http.get({ ...target, path, headers, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode, body }));
    });
    request.on('error', reject);
  });
}

/** Poll every 50 ms, generously bounded: CI machines are busy. */
export async function waitUntil(condition, { timeout = 30_000, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    if (await condition().catch(() => false)) return;
    await sleep(50);
  }
  throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}`);
}

/**
 * The fakes and a daemon serving felloh, fts and flotiq. `socket`: serve on a unix socket; `extra`: TOML
 * appended to the config; `ready`: the providers that must hold a token before the tests start.
 */
export async function startTokend({ lifetime = 3600, socket = false, extra = '', ready = ['felloh', 'fts', 'flotiq'] } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'tokend-node-'));
  const interpreter = python();
  const port = await freePort();
  const socketPath = socket ? join(dir, 'tokend.sock') : undefined;
  const args = [FAKES, '--dir', dir, '--port', String(port), '--lifetime', String(lifetime), '--extra', extra];
  const fakes = spawn(interpreter, socketPath ? [...args, '--socket', socketPath] : args, { stdio: ['pipe', 'pipe', 'inherit'] });
  const urls = JSON.parse(await firstLine(fakes.stdout));
  const logPath = join(dir, 'tokend.log');
  const log = openSync(logPath, 'w');
  const daemon = spawn(interpreter, ['-m', 'tokend', '--config', urls.config, 'run'], {
    stdio: ['ignore', log, log],
    env: { ...process.env, PYTHONUNBUFFERED: '1' },
  });
  // Whatever ends this test process (a failed assertion included), no daemon or fake outlives it.
  process.once('exit', () => [daemon, fakes].forEach((child) => child.exitCode === null && child.kill('SIGKILL')));
  const target = socketPath ? { socketPath } : { host: '127.0.0.1', port };
  const url = socketPath ? `unix:${socketPath}` : `http://127.0.0.1:${port}`;
  const tokend = new Tokend({ dir, fakes, daemon, target, url, socketPath, urls, logPath });
  try {
    await waitUntil(async () => {
      if (daemon.exitCode !== null) throw new Error(`tokend exited with ${daemon.exitCode}:\n${tokend.log()}`);
      const states = JSON.parse((await daemonRequest(target, '/readyz')).body).providers;
      return ready.every((name) => states[name] === 'ok');
    }, { what: `tokend to be ready` });
  } catch (error) {
    await tokend.stop();
    throw new Error(`${error.message}\n${tokend.log()}`);
  }
  return tokend;
}

class Tokend {
  constructor({ dir, fakes, daemon, target, url, socketPath, urls, logPath }) {
    Object.assign(this, { dir, fakes, daemon, target, url, socketPath, logPath });
    this.controlUrl = urls.control_url;
    /** A Felloh-protected resource that takes any method and body and echoes them (see fakes.py). */
    this.echoUrl = `${urls.control_url}/echo`;
    this.fellohUrl = urls.felloh_url;
    this.ftsUrl = urls.fts_url;
    this.flotiqUrl = urls.flotiq_url;
  }

  log() {
    try {
      return readFileSync(this.logPath, 'utf8');
    } catch {
      return '';
    }
  }

  async control(path, method = 'GET') {
    const response = await fetch(`${this.controlUrl}${path}`, { method });
    if (!response.ok) throw new Error(`control ${path} answered ${response.status}`);
    return response.json();
  }

  /** Logins each fake has answered: {felloh: {logins, login_attempts}, fts: ..., flotiq: ...}. */
  counts() {
    return this.control('/counts');
  }

  echoCount() {
    return this.control('/echo-count');
  }

  revoke(fake) {
    return this.control(`/revoke/${fake}`, 'POST');
  }

  fail(fake, status, times) {
    return this.control(`/fail/${fake}?status=${status}&times=${times}`, 'POST');
  }

  /** A counter from the daemon's /metrics, e.g. metric('tokend_requests_total', {route: '/token/{name}/refresh', status: '200'}). */
  async metric(name, labels) {
    const { body } = await daemonRequest(this.target, '/metrics');
    const wanted = Object.entries(labels).map(([label, value]) => `${label}="${value}"`);
    const line = body.split('\n').find((text) => text.startsWith(`${name}{`) && wanted.every((part) => text.includes(part)));
    return line === undefined ? 0 : Number(line.slice(line.lastIndexOf(' ') + 1));
  }

  async stop() {
    await Promise.all([stopProcess(this.daemon, 'SIGTERM'), closeStdin(this.fakes)]);
    await rm(this.dir, { recursive: true, force: true });
  }
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((resolve) => child.once('exit', resolve));
}

async function stopProcess(child, signal) {
  const done = exited(child);
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await done;
  clearTimeout(timer);
}

async function closeStdin(child) {
  const done = exited(child);
  child.stdin.end(); // fakes.py serves until its standard input closes
  const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
  await done;
  clearTimeout(timer);
}
