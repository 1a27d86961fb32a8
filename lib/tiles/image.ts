/** Image I/O with sharp: any input normalised to 8-bit sRGB RGB, EXIF-rotated, alpha flattened. */
import sharp, { type Metadata } from 'sharp';
import type { RGBImage } from '../engine/pixels.js';
export { type RGBImage, cropClamped, halve } from '../engine/pixels.js';


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
