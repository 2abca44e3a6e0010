import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {DforgeConfig} from './schema.js';

/**
 * Reads dforge.yaml. Validating it needs yaml and zod, which take about 120 ms to load: more than
 * anything else most commands do. So a successful validation is remembered in
 * state/dforge.yaml.validated.json, keyed by the SHA-256 of the file's bytes and of the schema
 * module; any edit to either, or a missing or unreadable cache, means a full validation again.
 */
export async function loadConfigFile(file: string, options: {fresh?: boolean} = {}): Promise<DforgeConfig> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new UserError(`no config at ${file}`, {
        nextSteps: ['Create one with: dforge config init --dir <install dir>', 'Or point --dir (or DFORGE_HOME) at an existing install.'],
        data: {file},
      });
    }
    throw err;
  }
  const key = await cacheKey(text);
  const cache = cacheFile(file);
  if (!options.fresh && key) {
    const cached = await readCache(cache);
    if (cached?.key === key && cached.config) return cached.config;
  }
  const {parseConfig} = await import('./parse.js');
  const config = parseConfig(text, file);
  // Best effort: a read-only install directory still works, only slower. A fresh validation (config
  // validate, maybe of a file that is not an install's) leaves nothing behind.
  if (key && !options.fresh) {
    await fs
      .mkdir(path.dirname(cache), {recursive: true, mode: 0o755})
      .then(() => writeFileAtomic(cache, `${JSON.stringify({key, config})}\n`, {mode: 0o600}))
      .catch(() => undefined);
  }
  return config;
}

/** The cached validation, or undefined when it is missing or unreadable (then the file is validated again). */
async function readCache(file: string): Promise<{key?: string; config?: DforgeConfig} | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as {key?: string; config?: DforgeConfig};
  } catch {
    return undefined;
  }
}

const cacheFile = (file: string): string => path.join(path.dirname(file), 'state', `${path.basename(file)}.validated.json`);

let schemaDigest: Promise<string | undefined> | undefined;

/**
 * The file's bytes and the schema's own compiled source: a dforge version with a changed schema
 * revalidates. Undefined (no caching) where there is no compiled schema next to this module.
 */
async function cacheKey(text: string): Promise<string | undefined> {
  schemaDigest ??= fs.readFile(new URL('./schema.js', import.meta.url)).then(
    (b) => createHash('sha256').update(b).digest('hex'),
    () => undefined,
  );
  const digest = await schemaDigest;
  return digest && createHash('sha256').update(digest).update('\0').update(text).digest('hex');
}
