import {constants, promises as fs} from 'node:fs';

/**
 * Reads a file the server account may control without following a symlink it planted, so root
 * never reads (or shows in an error) a file that account points it at. Undefined when absent or
 * not a regular file.
 */
export async function readNoFollow(file: string): Promise<string | undefined> {
  let handle: fs.FileHandle;
  try {
    // O_NONBLOCK: a FIFO in place of the file must not hang the read.
    handle = await fs.open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR' || code === 'ELOOP') return undefined;
    throw err;
  }
  try {
    if (!(await handle.stat()).isFile()) return undefined;
    return await handle.readFile('utf8');
  } finally {
    await handle.close();
  }
}
