import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

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

/**
 * Writes the rendered set into `outDir`: only files whose bytes differ are replaced (atomically),
 * and files a previous render wrote that this one no longer produces are removed, so the
 * directory is always exactly one render.
 */
export async function writeRendered(outDir: string, files: readonly RenderedFile[]): Promise<WriteResult> {
  const result: WriteResult = {written: [], unchanged: [], removed: []};
  const wanted = new Set(files.map((f) => f.path));
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
  for (const existing of await listFiles(outDir)) {
    if (!wanted.has(existing)) {
      await fs.rm(path.join(outDir, existing), {force: true});
      result.removed.push(existing);
    }
  }
  return result;
}

async function listFiles(root: string, prefix = ''): Promise<string[]> {
  const entries = await fs.readdir(path.join(root, prefix), {withFileTypes: true}).catch(() => []);
  const out: string[] = [];
  for (const e of entries) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await listFiles(root, rel)));
    else out.push(rel);
  }
  return out.sort();
}
