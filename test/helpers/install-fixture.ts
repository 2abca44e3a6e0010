import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {InstallDir} from '../../src/state/install-dir.js';

/** A fresh install directory in a temp folder; `keys` options go into its dforge.yaml. */
export async function tempInstall(options: {masterKeyProvider?: 'file' | 'env' | 'passphrase'} = {}): Promise<InstallDir & {cleanup(): Promise<void>}> {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-install-'));
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
`,
  );
  return Object.assign(dir, {cleanup: () => fs.rm(root, {recursive: true, force: true})});
}

/** Copies an install directory, so destructive trials start from the same state. */
export async function copyInstall(from: InstallDir, to: string): Promise<InstallDir> {
  await fs.cp(from.root, to, {recursive: true, preserveTimestamps: true});
  return new InstallDir(to);
}
