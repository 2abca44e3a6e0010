import {createHash, randomBytes} from 'node:crypto';
import {constants, promises as fs} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';

export interface AtomicWriteOptions {
  /** File mode of the result. Secret files pass 0o600. */
  readonly mode?: number;
}

/**
 * Replaces `file` with `data` so that a reader (or a crash) sees either the old bytes or the new
 * ones, never a mix (see writeFileStreamed).
 */
export async function writeFileAtomic(file: string, data: string | Uint8Array, options: AtomicWriteOptions = {}): Promise<void> {
  await writeFileStreamed(file, (write) => write(typeof data === 'string' ? Buffer.from(data, 'utf8') : data), options);
}

export interface StreamedWriteOptions extends AtomicWriteOptions {
  /** Name the file with link(2), not rename(2): a file that exists (or appears meanwhile) is never replaced, and the write fails with EEXIST. */
  readonly exclusive?: boolean;
}

/**
 * Writes a file produced piece by piece: into a temp file beside it, created with the final mode
 * (so a secret is never readable by others, even briefly) and hashed as it goes; only once
 * `produce` returns is it fsynced and given its name, and the directory fsynced. If anything
 * fails, `produce` included, the temp file is removed: nothing partial is left, and the old file,
 * if any, is unchanged.
 */
export async function writeFileStreamed(
  file: string,
  produce: (write: (chunk: Uint8Array) => Promise<void>) => Promise<void>,
  options: StreamedWriteOptions = {},
): Promise<{bytes: number; sha256: string}> {
  const dir = path.dirname(file);
  const mode = options.mode ?? 0o644;
  const temp = path.join(dir, `.${path.basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const hash = createHash('sha256');
  let bytes = 0;
  let handle: fs.FileHandle | undefined;
  try {
    handle = await fs.open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, mode);
    // open() applies the umask; chmod makes the mode exact.
    await handle.chmod(mode);
    const target = handle;
    await produce(async (chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
      // writeFile on a handle writes all of it, from the current position.
      await target.writeFile(chunk);
    });
    await handle.sync();
    await handle.close();
    handle = undefined;
    if (options.exclusive) {
      await fs.link(temp, file);
      await fs.rm(temp);
    } else {
      await fs.rename(temp, file);
    }
    await fsyncDir(dir);
  } catch (err) {
    await handle?.close().catch(() => {});
    await fs.rm(temp, {force: true}).catch(() => {});
    throw describeWriteError(err, file);
  }
  return {bytes, sha256: hash.digest('hex')};
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

export function describeWriteError(err: unknown, file: string): unknown {
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
