import {promises as fs} from 'node:fs';
import path from 'node:path';

import {writeFileAtomic} from '../state/atomic-file.js';

/**
 * Files under runtime/: what containers mount. Each belongs to the numeric user of the containers
 * that read it (postgres 999, the dForge services 10001), so a secret can stay 0600; which service
 * sees which file is decided by what compose mounts into it.
 */
export interface Ownership {
  readonly uid: number;
  readonly gid: number;
}

export const ROOT: Ownership = {uid: 0, gid: 0};

/**
 * Writes `file` only when its bytes, mode or owner differ; returns whether the bytes changed.
 * `beforeChange` runs first when they will, so a caller can record what must restart before the
 * change exists on disk.
 */
export async function writeRuntimeFile(file: string, content: string | Uint8Array, options: {mode: number; owner: Ownership; beforeChange?: () => Promise<void>}): Promise<boolean> {
  const wanted = typeof content === 'string' ? Buffer.from(content) : Buffer.from(content);
  const current = await fs.readFile(file).catch(() => undefined);
  const stat = await fs.stat(file).catch(() => undefined);
  const sameBytes = current !== undefined && current.equals(wanted);
  if (sameBytes && stat && (stat.mode & 0o7777) === options.mode && stat.uid === options.owner.uid && stat.gid === options.owner.gid) return false;
  await ensureRuntimeDir(path.dirname(file), {mode: 0o700, owner: ROOT}, {keepOwner: true});
  if (!sameBytes) {
    await options.beforeChange?.();
    await writeFileAtomic(file, wanted, {mode: options.mode});
  }
  await fs.chown(file, options.owner.uid, options.owner.gid);
  await fs.chmod(file, options.mode);
  return !sameBytes;
}

/** Creates a directory (and its parents, 0700 root) and sets its owner and mode. */
export async function ensureRuntimeDir(dir: string, options: {mode: number; owner: Ownership}, flags: {keepOwner?: boolean} = {}): Promise<void> {
  const existed = await fs.stat(dir).then(() => true, () => false);
  await fs.mkdir(dir, {recursive: true, mode: 0o700});
  // A directory made earlier for another service keeps its owner when only a parent was wanted.
  if (flags.keepOwner && existed) return;
  await fs.chown(dir, options.owner.uid, options.owner.gid);
  await fs.chmod(dir, options.mode);
}
