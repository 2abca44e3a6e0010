import {promises as fs} from 'node:fs';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {BugError} from '../errors.js';

/** templates/ of the dforge package: dist/render/ → the package root. */
export const PACKAGED_TEMPLATES = fileURLToPath(new URL('../../templates/', import.meta.url));

export interface TemplateSource {
  /** Path under templates/<target>/, e.g. proxy/nginx.conf. */
  readonly name: string;
  readonly text: string;
  /** Where it came from: the package, or an operator's override in <dir>/templates/. */
  readonly origin: string;
}

/**
 * Reads a template, preferring the operator's copy under <install dir>/templates/<target>/:
 * an override shadows the packaged file of the same name, and nothing else.
 */
export async function readTemplate(target: string, name: string, overridesDir: string | undefined): Promise<TemplateSource> {
  if (overridesDir) {
    const override = path.join(overridesDir, target, name);
    const text = await fs.readFile(override, 'utf8').catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (text !== undefined) return {name, text, origin: override};
  }
  const packaged = path.join(PACKAGED_TEMPLATES, target, name);
  const text = await fs.readFile(packaged, 'utf8').catch((err: unknown) => {
    throw new BugError(`the packaged template ${packaged} is missing`, {cause: err});
  });
  return {name, text, origin: packaged};
}
