import {lstatSync, mkdirSync} from 'node:fs';
import module from 'node:module';
import os from 'node:os';
import path from 'node:path';

/** Below the user's home: `.cache/dforge/node-compile-cache`. */
const CACHE_PATH = ['.cache', 'dforge', 'node-compile-cache'];

/**
 * Turns on V8's compile cache in a directory nobody but the running user can write, or leaves it
 * off. Node's default, `/tmp/node-compile-cache`, can be created first by any local user and filled
 * with code that a root-run dforge would execute; so can a home that is not ours (HOME kept across
 * sudo) or a relative one (HOME empty). The cache only saves start-up time, so any doubt means no
 * cache. Returns the directory when it is in use.
 */
export function enableUserCompileCache(home: () => string = os.homedir): string | undefined {
  const uid = process.geteuid?.();
  if (uid === undefined) return undefined;
  let dir: string;
  try {
    dir = home();
    if (!path.isAbsolute(dir) || !closedToOthers(dir, uid)) return undefined;
    for (const part of CACHE_PATH) {
      dir = path.join(dir, part);
      try {
        mkdirSync(dir, {mode: 0o700});
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') return undefined;
      }
      if (!closedToOthers(dir, uid)) return undefined;
    }
  } catch {
    // os.homedir() throws when HOME is unset and the uid has no passwd entry.
    return undefined;
  }
  const result = module.enableCompileCache?.(dir);
  return result?.directory;
}

/** A real directory (not a link to one), owned by `uid`, that neither group nor others may write. */
function closedToOthers(dir: string, uid: number): boolean {
  const st = lstatSync(dir);
  return st.isDirectory() && st.uid === uid && (st.mode & 0o022) === 0;
}
