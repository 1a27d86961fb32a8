/** Image I/O with sharp: any input normalised to 8-bit sRGB RGB, EXIF-rotated, alpha flattened. */
import sharp, { type Metadata } from 'sharp';

export interface RGBImage { width: number; height: number; data: Uint8Array }   // HWC, 3 channels

export class ImageError extends Error { constructor(msg: string, readonly status = 400) { super(msg); } }

export interface DecodeLimits { maxPixels?: number }

export async function loadRGB(input: string | Buffer, limits: DecodeLimits = {}): Promise<RGBImage> {
  const maxPixels = limits.maxPixels ?? 268_402_689;
  let meta: Metadata;
  try {
    meta = await sharp(input, { limitInputPixels: false }).metadata();
  } catch (e) {
    throw new ImageError(`not a readable image (${(e as Error).message}); accepted: JPEG, PNG, WebP, TIFF, GIF, AVIF`);
  }
  if (!meta.width || !meta.height) throw new ImageError('image has no dimensions; accepted: JPEG, PNG, WebP, TIFF, GIF, AVIF');
  if ((meta.pages ?? 1) > 1) throw new ImageError(`animated/multi-page images are not accepted (${meta.pages} pages); upload a single frame`);
  if (meta.width * meta.height > maxPixels)
    throw new ImageError(`image is ${meta.width}×${meta.height} = ${meta.width * meta.height} pixels, over the limit of ${maxPixels} pixels (upload.maxPixels)`, 413);
  try {
    const { data, info } = await sharp(input, { limitInputPixels: maxPixels, failOn: 'truncated' })
      .rotate().flatten({ background: '#ffffff' }).toColourspace('srgb').removeAlpha()
      .raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels`);
    return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.length) };
  } catch (e) {
    throw new ImageError(`image could not be decoded (${(e as Error).message}); it may be truncated or corrupt`);
  }
}

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

/** Crop with edge replication for coordinates outside the image. */
export function cropClamped(img: RGBImage, x0: number, y0: number, w: number, h: number): Uint8Array {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const sy = Math.min(Math.max(y0 + y, 0), img.height - 1);
    for (let x = 0; x < w; x++) {
      const sx = Math.min(Math.max(x0 + x, 0), img.width - 1);
      const s = (sy * img.width + sx) * 3, d = (y * w + x) * 3;
      out[d] = img.data[s]; out[d + 1] = img.data[s + 1]; out[d + 2] = img.data[s + 2];
    }
  }
  return out;
}

/** dzsave's 2×2 box reduction: (a+b+c+d+2)>>2, odd edges replicated. */
export function halve(img: RGBImage): RGBImage {
  const w = Math.ceil(img.width / 2), h = Math.ceil(img.height / 2);
  const out = new Uint8Array(w * h * 3);
  const W = img.width, H = img.height, d = img.data;
  for (let y = 0; y < h; y++) {
    const y0 = 2 * y, y1 = Math.min(2 * y + 1, H - 1);
    for (let x = 0; x < w; x++) {
      const x0 = 2 * x, x1 = Math.min(2 * x + 1, W - 1);
      for (let c = 0; c < 3; c++) {
        out[(y * w + x) * 3 + c] = (d[(y0 * W + x0) * 3 + c] + d[(y0 * W + x1) * 3 + c] + d[(y1 * W + x0) * 3 + c] + d[(y1 * W + x1) * 3 + c] + 2) >> 2;
      }
    }
  }
  return { width: w, height: h, data: out };
}
