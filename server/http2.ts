/**
 * `infdit serve --http2`: HTTP/2 over TLS (HTTP/1.1 too, by ALPN), so a viewer can have many
 * tile requests in flight on one connection instead of HTTP/1.1's six. Express does not run on
 * node:http2's request objects, so the TLS front end forwards each request to the same express
 * app listening on a private loopback port (a reverse proxy in-process). A client that goes
 * away is passed on, so cancellation works as over HTTP/1.1.
 */
import http from 'node:http';
import http2 from 'node:http2';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AddressInfo } from 'node:net';
import type { Express } from 'express';

const HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'http2-settings', 'te', 'host']);

/** A self-signed certificate for localhost, made once with openssl and kept in dir. */
export function selfSigned(dir: string): { cert: Buffer; key: Buffer } {
  mkdirSync(dir, { recursive: true });
  const cert = join(dir, 'localhost.crt'), key = join(dir, 'localhost.key');
  if (!existsSync(cert) || !existsSync(key)) {
    try {
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256', '-days', '3650', '-subj', '/CN=localhost',
        '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', key, '-out', cert], { stdio: 'pipe' });
    } catch (e) {
      throw new Error(`could not make a self-signed certificate with openssl (${(e as Error).message.split('\n')[0]}); install openssl or pass --tls-cert and --tls-key`);
    }
  }
  return { cert: readFileSync(cert), key: readFileSync(key) };
}

export async function listenHttp2(app: Express, opts: { port: number; host: string; cert: Buffer; key: Buffer }) {
  app.set('trust proxy', 'loopback');
  const inner = http.createServer(app);
  await new Promise<void>(r => inner.listen(0, '127.0.0.1', r));
  const innerPort = (inner.address() as AddressInfo).port;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 512 });
  const server = http2.createSecureServer({ cert: opts.cert, key: opts.key, allowHTTP1: true }, (req, res) => {
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, v] of Object.entries(req.headers)) if (!k.startsWith(':') && !HOP.has(k) && v !== undefined) headers[k] = v;
    headers.host = (req.headers[':authority'] as string) ?? req.headers.host ?? `${opts.host}:${opts.port}`;
    headers['x-forwarded-proto'] = 'https';
    const up = http.request({ host: '127.0.0.1', port: innerPort, method: req.method, path: req.url, headers, agent }, ir => {
      const out: http.OutgoingHttpHeaders = {};
      for (const [k, v] of Object.entries(ir.headers)) if (!HOP.has(k) && v !== undefined) out[k] = v;
      res.writeHead(ir.statusCode ?? 502, out);
      ir.pipe(res as unknown as NodeJS.WritableStream);
    });
    up.on('error', () => { if (!res.headersSent) { res.writeHead(502, { 'content-type': 'application/json' }); res.end('{"error":"upstream failed","status":502}'); } else res.end(); });
    res.on('close', () => { if (!res.writableFinished) up.destroy(); });   // the viewer went away
    (req as unknown as NodeJS.ReadableStream).pipe(up);
  });
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(opts.port, opts.host, () => resolve()); });
  return { server, inner, port: (server.address() as AddressInfo).port };
}
