// Starts and stops the real Parley binary for the Node suites ($PARLEY_BIN, or build/parley in
// the repository). A server gets a free loopback port and a fresh temporary data directory; its
// output goes to a log file whose tail is attached to failures. stop() sends SIGTERM and requires
// exit code 0 within 5 s (otherwise SIGKILL and an error).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export function parleyBin() {
  if (process.env.PARLEY_BIN) return process.env.PARLEY_BIN;
  for (const candidate of ['build/parley', 'build-asan/parley']) {
    const full = path.join(repo, candidate);
    try {
      fs.accessSync(full, fs.constants.X_OK);
      return full;
    } catch {
      // try the next one
    }
  }
  throw new Error('PARLEY_BIN is not set and no build/parley exists');
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function healthz(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/healthz', timeout: 1000 }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(0));
  });
}

export class ParleyServer {
  constructor({ args = [], echo = false, threads = 2, name = 'parley' } = {}) {
    this.extraArgs = [...args];
    if (echo) this.extraArgs.push('--debug.echo_endpoint=true');
    this.threads = threads;
    this.name = name;
    this.proc = null;
    this.exit = null;
  }

  async start(readyTimeoutMs = 10000) {
    this.tmpdir = fs.mkdtempSync(path.join(os.tmpdir(), 'parley-it-node-'));
    this.logPath = path.join(this.tmpdir, 'server.log');
    let lastError = '';
    for (let attempt = 0; attempt < 3; attempt++) {
      this.port = await freePort();
      const cmd = [parleyBin(), '--listen', `127.0.0.1:${this.port}`,
        '--data', path.join(this.tmpdir, `data-${this.port}`), '--threads', String(this.threads),
        ...this.extraArgs];
      fs.appendFileSync(this.logPath, `$ ${cmd.join(' ')}\n`);
      const fd = fs.openSync(this.logPath, 'a');
      this.proc = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', fd, fd] });
      fs.closeSync(fd);
      this.exit = new Promise((resolve) => {
        this.proc.on('exit', (code, signal) => resolve({ code, signal }));
      });
      const deadline = Date.now() + readyTimeoutMs;
      let exited = false;
      this.exit.then(() => { exited = true; });
      while (Date.now() < deadline && !exited) {
        const status = await healthz(this.port);
        if (status === 200) return this;
        lastError = status ? `GET /healthz answered ${status}` : 'no answer';
        await sleep(50);
      }
      if (!exited) {
        this.proc.kill('SIGKILL');
        await this.exit;
        break; // running but not healthy: not a port clash
      }
      lastError = `exited before becoming ready (${JSON.stringify(await this.exit)})`;
    }
    throw new Error(`${this.name} did not become ready: ${lastError}\n${this.logTail()}`);
  }

  url(p = '/ws') {
    return `ws://127.0.0.1:${this.port}${p}`;
  }

  logTail(lines = 60) {
    try {
      const text = fs.readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n');
      return `---- ${this.name} log (${this.logPath}) ----\n${text}\n---- end of log ----`;
    } catch {
      return '(no server log)';
    }
  }

  // Waits up to timeoutMs for the process to exit; {code, signal}, or null if it had to be killed.
  async waitExit(timeoutMs = 5000) {
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve(null), timeoutMs);
    });
    const result = await Promise.race([this.exit, timeout]);
    clearTimeout(timer);
    if (result === null) {
      this.proc.kill('SIGKILL');
      await this.exit;
    }
    return result;
  }

  async stop({ signal = 'SIGTERM', timeoutMs = 5000, check = true } = {}) {
    if (!this.proc) return;
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
    const result = await this.waitExit(timeoutMs);
    const tail = this.logTail();
    this.proc = null;
    const ok = result !== null && result.code === 0;
    if (ok) fs.rmSync(this.tmpdir, { recursive: true, force: true });
    if (check && !ok) {
      const what = result === null ? `did not exit within ${timeoutMs} ms of ${signal} (killed)`
        : `exited with ${JSON.stringify(result)} after ${signal}`;
      throw new Error(`${this.name} ${what}\n${tail}`);
    }
  }
}

export async function startServer(options) {
  return new ParleyServer(options).start();
}
