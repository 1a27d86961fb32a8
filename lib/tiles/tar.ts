/** A minimal ustar writer: enough to hand a DZI pyramid to any tool (tar -x). Deterministic:
 *  fixed mtime, owner and mode, files in the order given. */
import type { Writable } from 'node:stream';

function header(name: string, size: number, dir: boolean): Buffer {
  const h = Buffer.alloc(512);
  let prefix = '';
  if (Buffer.byteLength(name) > 100) { const i = name.lastIndexOf('/', 154); prefix = name.slice(0, i); name = name.slice(i + 1); }
  h.write(name, 0, 100, 'utf8');
  h.write((dir ? '0000755' : '0000644') + '\0', 100);
  h.write('0000000\0', 108); h.write('0000000\0', 116);
  h.write(size.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h.write(dir ? '5' : '0', 156);
  h.write('ustar\0', 257); h.write('00', 263);
  h.write(prefix, 345, 155, 'utf8');
  let sum = 0; for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  return h;
}

export async function writeTar(out: Writable, entries: AsyncIterable<{ name: string; data?: Buffer }> | Iterable<{ name: string; data?: Buffer }>) {
  const write = (b: Buffer) => new Promise<void>((res, rej) => out.write(b, e => (e ? rej(e) : res())));
  for await (const e of entries) {
    const dir = !e.data;
    await write(header(e.name + (dir && !e.name.endsWith('/') ? '/' : ''), e.data?.length ?? 0, dir));
    if (e.data) { await write(e.data); const pad = (512 - (e.data.length % 512)) % 512; if (pad) await write(Buffer.alloc(pad)); }
  }
  await write(Buffer.alloc(1024));
}
