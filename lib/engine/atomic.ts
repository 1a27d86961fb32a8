/** Write a file so that no reader ever sees half of it: a temp name, then rename. A crash leaves
 *  at most a `*.tmp`, which the service removes at start; a failed write (a full disk) removes
 *  its own and says so in words (DiskFullError). */
import { writeFileSync, renameSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export class DiskFullError extends Error {
  constructor(path: string) { super(`no space left on the device to write ${path}: free space or lower --disk-budget-mb`); this.name = 'DiskFullError'; }
}

export function atomicWrite(path: string, data: Uint8Array | string) {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    if ((e as NodeJS.ErrnoException).code === 'ENOSPC' || (e as NodeJS.ErrnoException).code === 'EDQUOT') throw new DiskFullError(path);
    throw e;
  }
}
