import {randomBytes} from 'node:crypto';
import {constants, promises as fs} from 'node:fs';
import path from 'node:path';
import {pipeline} from 'node:stream/promises';

import {UserError, VerificationError} from '../errors.js';
import {collisionKey, entryNameProblem, locateEntries, openVerifiedEntry} from './entries.js';
import {LIMITS, TEMPLATES_PREFIX, type BundleEntry} from './manifest.js';
import type {VerifiedBundle} from './verified-bundle.js';

/** The most one extraction writes: templates are small and the executable is one binary. */
export const EXTRACT_MAX_BYTES = 1024 * 1024 * 1024;

const EXTRACTABLE = new Set(['template', 'executable']);

const refuse = (entry: string, why: string): VerificationError =>
  new VerificationError(`bundle entry ${JSON.stringify(entry)} is not extracted: ${why}`, {
    nextSteps: ['Nothing was written. Do not use this bundle; get it again from whoever built it, and check it with: dforge bundle verify FILE --trusted-key PUB'],
    data: {reason: 'extract', entry},
  });

/**
 * Writes the selected templates and the executable of a verified bundle under targetDir, and
 * nothing else. Every check runs before the first byte is written, so a refusal leaves the
 * target as it was. Returns the paths written, relative to targetDir.
 */
export async function extractVerified(verified: VerifiedBundle, targetDir: string, select: (e: BundleEntry) => boolean): Promise<string[]> {
  const listed = locateEntries(verified.manifest);
  const chosen = listed.filter((e) => select(e));
  if (chosen.length > LIMITS.entries) throw refuse(chosen[0]!.path, `more than ${LIMITS.entries} entries were selected`);
  const keys = new Map<string, string>();
  let total = 0;
  for (const entry of chosen) {
    const problem = entryNameProblem(entry.path);
    if (problem !== null) throw refuse(entry.path, problem);
    if (!EXTRACTABLE.has(entry.kind)) throw refuse(entry.path, `only templates and the dforge executable are ever written to disk, and this is a ${entry.kind}`);
    if (entry.kind === 'template' && !entry.path.startsWith(TEMPLATES_PREFIX)) throw refuse(entry.path, 'a template outside templates/');
    if ((entry.mode & 0o6000) !== 0 || (entry.mode !== 0o644 && entry.mode !== 0o755)) throw refuse(entry.path, `mode ${entry.mode.toString(8)} is not 0644 or 0755`);
    const key = collisionKey(entry.path);
    const other = keys.get(key);
    if (other !== undefined) throw refuse(entry.path, `it names the same file as ${JSON.stringify(other)} after Unicode normalisation or case folding`);
    keys.set(key, entry.path);
    total += entry.size;
    if (total > EXTRACT_MAX_BYTES) throw refuse(entry.path, `the selected entries exceed ${EXTRACT_MAX_BYTES} bytes`);
  }
  for (const entry of chosen) {
    const segments = entry.path.split('/');
    for (let i = 1; i < segments.length; i++) {
      const dir = collisionKey(segments.slice(0, i).join('/'));
      const other = keys.get(dir);
      if (other !== undefined) throw refuse(entry.path, `its directory is the file ${JSON.stringify(other)}`);
    }
  }

  await fs.mkdir(targetDir, {recursive: true, mode: 0o700});
  const root = await fs.realpath(targetDir);
  for (const entry of chosen) await checkNoLinks(root, entry.path);

  const written: string[] = [];
  for (const entry of chosen) {
    const segments = entry.path.split('/');
    let dir = root;
    for (const segment of segments.slice(0, -1)) {
      dir = path.join(dir, segment);
      await fs.mkdir(dir, {mode: 0o755}).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      const stat = await fs.lstat(dir);
      if (!stat.isDirectory()) throw refuse(entry.path, `${path.relative(root, dir)} in the target is a ${stat.isSymbolicLink() ? 'symbolic link' : 'file'}, not a directory`);
    }
    const final = path.join(dir, segments.at(-1)!);
    const temp = path.join(dir, `.${segments.at(-1)!}.${randomBytes(6).toString('hex')}.tmp`);
    // O_EXCL|O_NOFOLLOW: the temp name is new, so nothing planted in the target is written through.
    const handle = await fs.open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, entry.mode);
    try {
      // The umask may have dropped bits from open's mode; set them on the handle, never by path.
      await handle.chmod(entry.mode);
      // flush: fsync before the stream closes the handle, so the rename publishes durable bytes.
      await pipeline(openVerifiedEntry(verified, entry), handle.createWriteStream({flush: true}));
    } catch (err) {
      await handle.close().catch(() => undefined);
      await fs.rm(temp, {force: true});
      throw err;
    }
    const existing = await fs.lstat(final).catch(() => undefined);
    if (existing !== undefined && !existing.isFile()) {
      await fs.rm(temp, {force: true});
      throw refuse(entry.path, `${path.relative(root, final)} in the target exists and is not a regular file`);
    }
    await fs.rename(temp, final);
    written.push(entry.path);
  }
  return written;
}

/** Refuses before writing when a path component already in the target is a symlink or not a directory. */
async function checkNoLinks(root: string, entryPath: string): Promise<void> {
  const segments = entryPath.split('/');
  let at = root;
  for (const [i, segment] of segments.entries()) {
    at = path.join(at, segment);
    const stat = await fs.lstat(at).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw new UserError(`cannot inspect ${at}: ${err.code ?? err.message}`, {nextSteps: ['Check the permissions of the target directory.']});
    });
    if (stat === undefined) return;
    if (stat.isSymbolicLink()) throw refuse(entryPath, `${path.relative(root, at)} in the target is a symbolic link; dforge never writes through one`);
    const last = i === segments.length - 1;
    if (!last && !stat.isDirectory()) throw refuse(entryPath, `${path.relative(root, at)} in the target is not a directory`);
    if (last && !stat.isFile()) throw refuse(entryPath, `${path.relative(root, at)} in the target exists and is not a regular file`);
  }
}
