import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {InstallDir} from '../../src/state/install-dir.js';

/**
 * A fresh install directory in a temp folder (under `base`, default the system's); `keys` options
 * go into its dforge.yaml (`mountedKeyDir` with the mounted provider).
 */
export async function tempInstall(options: {masterKeyProvider?: 'file' | 'env' | 'passphrase' | 'mounted'; mountedKeyDir?: string; base?: string} = {}): Promise<InstallDir & {cleanup(): Promise<void>}> {
  const root = await fs.mkdtemp(path.join(options.base ?? os.tmpdir(), 'dforge-install-'));
  const dir = new InstallDir(root);
  await dir.ensureLayout();
  await fs.writeFile(
    dir.configFile,
    `version: 1
domain: dforge.example.test
target: embedded
primaryRegion: eu
regions:
  eu:
    clusters:
      - name: eu-1
        kind: embedded
keys:
  masterKeyProvider: ${options.masterKeyProvider ?? 'file'}
${options.mountedKeyDir ? `  mountedKeyDir: ${options.mountedKeyDir}\n` : ''}`,
  );
  return Object.assign(dir, {cleanup: () => fs.rm(root, {recursive: true, force: true})});
}

/** Copies an install directory, so destructive trials start from the same state. */
export async function copyInstall(from: InstallDir, to: string): Promise<InstallDir> {
  await fs.cp(from.root, to, {recursive: true, preserveTimestamps: true});
  return new InstallDir(to);
}
