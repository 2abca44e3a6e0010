import {promises as fs} from 'node:fs';
import path from 'node:path';

import {stringify} from 'yaml';

import {UserError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {acquireLock} from '../state/lock.js';
import {configJsonSchema, configSchema, type DforgeConfig} from './schema.js';

export interface InitOptions {
  readonly domain: string;
  readonly target: DforgeConfig['target'];
  readonly region: string;
  /** Port of the embedded cluster (target embedded). */
  readonly port?: number;
  /** Shown to a concurrent run that is refused the lock. */
  readonly command: string;
}

export interface InitResult {
  readonly dir: string;
  readonly configFile: string;
  readonly schemaFile: string;
  /** False when a dforge.yaml was already there; it is never overwritten. */
  readonly createdConfig: boolean;
}

const SCHEMA_FILE = 'dforge.schema.json';

/**
 * Lays out an install directory and writes a starter dforge.yaml, under the install lock.
 * Idempotent: directories get their modes corrected, an existing config is left untouched.
 */
export async function initInstallDir(dir: InstallDir, options: InitOptions): Promise<InitResult> {
  return layOutWithConfig(dir, renderConfig(starterConfig(dir, options)), options.command);
}

/**
 * Lays out an install directory around a complete config (what `dforge install` decided), under
 * the install lock. An existing dforge.yaml is never overwritten.
 */
export async function layOutWithConfig(dir: InstallDir, configText: string, command: string): Promise<InitResult> {
  await fs.mkdir(dir.root, {recursive: true, mode: 0o755});
  const lock = await acquireLock(dir.locksDir, 'install', {command});
  try {
    await dir.ensureLayout();
    const schemaFile = path.join(dir.root, SCHEMA_FILE);
    await writeFileAtomic(schemaFile, `${JSON.stringify(configJsonSchema(), null, 2)}\n`);
    const exists = await fs.stat(dir.configFile).then(() => true, () => false);
    if (!exists) await writeFileAtomic(dir.configFile, configText);
    return {dir: dir.root, configFile: dir.configFile, schemaFile, createdConfig: !exists};
  } finally {
    await lock.release();
  }
}

export function starterConfig(dir: InstallDir, options: InitOptions): DforgeConfig {
  const candidate = {
    version: 1,
    domain: options.domain,
    target: options.target,
    primaryRegion: options.region,
    regions: {
      [options.region]: {
        clusters: [options.target === 'embedded' ? {name: `${options.region}-1`, kind: 'embedded', port: options.port ?? 5432} : {name: `${options.region}-1`, kind: 'bundled'}],
        backup: {destinations: [{name: `${options.region}-local`, kind: 'local', path: path.join(dir.root, 'backups', options.region)}]},
      },
    },
  };
  const parsed = configSchema.safeParse(candidate);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const flag = issue.path[0] === 'domain' ? '--domain' : issue.path[0] === 'target' ? '--target' : '--region';
    throw new UserError(`${flag} is not valid: ${issue.message}`, {nextSteps: [`Pass a valid ${flag}; see: dforge config init --help`]});
  }
  return parsed.data;
}

/** The starter config spells out only what differs by install; the rest are schema defaults. */
function renderConfig(config: DforgeConfig): string {
  const {images: _images, tls: _tls, keys: _keys, compose: _compose, kubernetes: _kubernetes, release: _release, ...explicit} = config;
  return configText(explicit);
}

/** dforge.yaml text: the schema reference for editors, a header, then the settings. */
export function configText(settings: Partial<DforgeConfig>): string {
  return `# yaml-language-server: $schema=./${SCHEMA_FILE}\n# dforge install config. No secrets here: credentials are references into secrets/.\n${stringify(settings, {lineWidth: 0})}`;
}
