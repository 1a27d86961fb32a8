/** Image errors and encoding with sharp (decoding an upload: lib/tiles/lrfile.ts). */
import sharp from 'sharp';
import type { RGBImage } from '../engine/pixels.js';
export { type RGBImage, cropClamped, halve } from '../engine/pixels.js';


export class ImageError extends Error { constructor(msg: string, readonly status = 400) { super(msg); } }

/** Encode HWC RGB bytes. */
export function encode(img: RGBImage, format: 'jpeg' | 'png' | 'webp' | 'tiff', quality = 90): Promise<Buffer> {
  const s = sharp(Buffer.from(img.data.buffer, img.data.byteOffset, img.data.length), { raw: { width: img.width, height: img.height, channels: 3 } });
  switch (format) {
    case 'jpeg': return s.jpeg({ quality, mozjpeg: false }).toBuffer();
    case 'png': return s.png({ compressionLevel: 6 }).toBuffer();
    case 'webp': return s.webp({ quality }).toBuffer();
    case 'tiff': return s.tiff({ compression: 'lzw' }).toBuffer();
  }
}
