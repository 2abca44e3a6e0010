import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';

/** One output file of `dforge render`, by its path under the output directory. */
export interface RenderedFile {
  readonly path: string;
  readonly content: string;
}

/** Order independent of the machine's locale, which localeCompare would consult: rendered bytes must not depend on it. */
export const byCodePoint = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

export const sha256 = (text: string | Buffer): string => createHash('sha256').update(text).digest('hex');

/** One hash over several files, in path order, for a label that changes when any of them does. */
export function hashFiles(files: readonly RenderedFile[]): string {
  const h = createHash('sha256');
  for (const f of [...files].sort((a, b) => byCodePoint(a.path, b.path))) h.update(`${f.path}\0${sha256(f.content)}\n`);
  return h.digest('hex').slice(0, 16);
}

export interface WriteResult {
  readonly written: string[];
  readonly unchanged: string[];
  readonly removed: string[];
}

/** The list of files a render wrote, kept in the output directory: what the next render may remove. */
const MANIFEST = '.dforge-rendered';

/**
 * Writes the rendered set into `outDir`: only files whose bytes differ are replaced (atomically),
 * and files the previous render wrote that this one no longer produces are removed, so the
 * directory is always exactly one render. Files dforge did not write are never touched, and a
 * non-empty directory that no render wrote is refused rather than mixed into.
 */
export async function writeRendered(outDir: string, files: readonly RenderedFile[]): Promise<WriteResult> {
  const result: WriteResult = {written: [], unchanged: [], removed: []};
  const wanted = new Set(files.map((f) => f.path));
  const existing = await listFiles(outDir);
  const previous = (await readManifest(outDir)) ?? adoptable(existing, wanted);
  if (previous === undefined) {
    throw new UserError(`${outDir} holds files that dforge render did not write`, {
      nextSteps: ['Render into an empty or new directory (--out), or into one an earlier render wrote.'],
    });
  }
  // The list first grows to cover both renders, so a run that dies half-way leaves a directory
  // the next render still recognises; it shrinks to this render once the files are in place.
  await writeManifest(outDir, new Set([...previous, ...wanted]));
  for (const file of files) {
    const target = path.join(outDir, file.path);
    const current = await fs.readFile(target, 'utf8').catch(() => undefined);
    if (current === file.content) {
      result.unchanged.push(file.path);
      continue;
    }
    await fs.mkdir(path.dirname(target), {recursive: true, mode: 0o755});
    await writeFileAtomic(target, file.content, {mode: 0o644});
    result.written.push(file.path);
  }
  for (const old of previous) {
    if (!wanted.has(old)) {
      await fs.rm(path.join(outDir, old), {force: true});
      result.removed.push(old);
    }
  }
  await writeManifest(outDir, wanted);
  return result;
}

/** A directory without a list is taken over only when everything in it is a file this render writes. */
function adoptable(existing: readonly string[], wanted: ReadonlySet<string>): string[] | undefined {
  return existing.every((f) => wanted.has(f)) ? [...existing] : undefined;
}

async function writeManifest(outDir: string, paths: ReadonlySet<string>): Promise<void> {
  const text = `${[...paths].sort(byCodePoint).join('\n')}\n`;
  if ((await fs.readFile(path.join(outDir, MANIFEST), 'utf8').catch(() => undefined)) === text) return;
  await fs.mkdir(outDir, {recursive: true, mode: 0o755});
  await writeFileAtomic(path.join(outDir, MANIFEST), text, {mode: 0o644});
}

async function listFiles(root: string, prefix = ''): Promise<string[]> {
  const entries = await fs.readdir(path.join(root, prefix), {withFileTypes: true}).catch(() => []);
  const out: string[] = [];
  for (const e of entries) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (rel === MANIFEST) continue;
    if (e.isDirectory()) out.push(...(await listFiles(root, rel)));
    else out.push(rel);
  }
  return out.sort(byCodePoint);
}

async function readManifest(outDir: string): Promise<string[] | undefined> {
  const text = await fs.readFile(path.join(outDir, MANIFEST), 'utf8').catch(() => undefined);
  // Only plain relative paths: a hand-edited manifest must not steer a removal outside the directory.
  return text?.split('\n').filter((p) => p !== '' && !path.isAbsolute(p) && !p.split('/').includes('..'));
}
