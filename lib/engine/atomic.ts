/** Write a file so that no reader ever sees half of it: a temp name, then rename. A crash leaves
 *  at most a `*.tmp`, which the service removes at start. */
import { writeFileSync, renameSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

export function atomicWrite(path: string, data: Uint8Array | string) {
  const tmp = `${path}.${randomBytes(4).toString('hex')}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}
