import {randomBytes} from 'node:crypto';
import {constants, promises as fs} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';

export interface AtomicWriteOptions {
  /** File mode of the result. Secret files pass 0o600. */
  readonly mode?: number;
}

/**
 * Replaces `file` with `data` so that a reader (or a crash) sees either the old bytes or the new
 * ones, never a mix: write a temp file beside it, fsync it, rename it over, fsync the directory.
 * The temp file is created with the final mode, so a secret is never readable by others, even briefly.
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, options: AtomicWriteOptions = {}): Promise<void> {
  const dir = path.dirname(file);
  const mode = options.mode ?? 0o644;
  const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  let handle: fs.FileHandle | undefined;
  try {
    handle = await fs.open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
    // open() applies the umask; chmod makes the mode exact.
    await handle.chmod(mode);
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fs.rename(temp, file);
    await fsyncDir(dir);
  } catch (err) {
    await handle?.close().catch(() => {});
    await fs.rm(temp, {force: true}).catch(() => {});
    throw describeWriteError(err, file);
  }
}

/** Makes a rename or unlink in `dir` durable. */
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fs.open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

function describeWriteError(err: unknown, file: string): unknown {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new UserError(`no space left to write ${file}; the previous version is unchanged`, {
      nextSteps: [`Free space on the file system holding ${path.dirname(file)} (df -h ${path.dirname(file)}), then re-run.`],
      cause: err,
    });
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new UserError(`cannot write ${file}: ${code}`, {
      nextSteps: [`Run dforge as the owner of ${path.dirname(file)}, or fix its permissions.`],
      cause: err,
    });
  }
  return err;
}
