/** What the routes share: the JSON-error type, the base URL, and how an image answer is sent. */
import type { Request, Response } from 'express';

export class HttpError extends Error { constructor(readonly status: number, msg: string) { super(msg); } }

export const baseUrl = (req: Request) => `${req.protocol}://${req.get('host')}`;

/** Aborted when the client goes away before the answer is sent (a viewer panned on). */
export function clientGone(res: Response): AbortSignal {
  const ac = new AbortController();
  res.on('close', () => { if (!res.writableFinished) ac.abort(); });
  return ac.signal;
}

/** A final image: immutable, strong ETag, 304 when the client has it. */
export function sendImmutable(req: Request, res: Response, type: string, t: { bytes: Buffer; etag: string }, extra: Record<string, string> = {}) {
  res.set({ 'Content-Type': type, ETag: t.etag, 'Cache-Control': 'public, max-age=31536000, immutable', ...extra });
  if (req.headers['if-none-match'] === t.etag) { res.status(304).end(); return; }
  res.send(t.bytes);
}
