import {timingSafeEqual} from 'node:crypto';
import {constants, promises as fs} from 'node:fs';
import path from 'node:path';

import {withOpsRecord} from '../audit/record.js';
import {UserError} from '../errors.js';
import {keyCheckValue} from '../secrets/envelope.js';
import {keySourceFor, readKeyringState, type KeyringState} from '../secrets/master-key.js';
import type {InstallDir} from '../state/install-dir.js';
import {keySettings} from './context.js';

export interface MasterKeyExport {
  readonly file: string;
  /** The master versions written to the file: every one whose material still exists. */
  readonly versions: number[];
}

/** The export file: the key material in DFORGE_MASTER_KEY's own form, and the keyring that names each version's check value. */
interface ExportFile {
  readonly format: 'dforge-master-key-export/1';
  readonly exportedAt: string;
  readonly install: string;
  /** "<version>:<base64>[,...]": the value of DFORGE_MASTER_KEY that opens every backup these versions wrapped. */
  readonly DFORGE_MASTER_KEY: string;
  readonly keyring: KeyringState;
}

/**
 * Writes every existing version of the master key to `file` (0600, never over an existing file),
 * so backups stay readable after the install directory's secrets are gone. Each version is checked
 * against its key check value first: a wrong key exported is worse than none. Recorded in the ops
 * log while there is one to write to.
 */
export async function exportMasterKey(dir: InstallDir, file: string, options: {env?: NodeJS.ProcessEnv; clock?: () => Date} = {}): Promise<MasterKeyExport> {
  const target = path.resolve(file);
  const state = await readKeyringState(dir);
  if (!state) throw new UserError(`${dir.root} has no master keyring (secrets/master/keyring.json)`, {nextSteps: ['There is no master key to export: the install was never initialised, or its secrets are already gone.']});
  // The keyring names the provider that made it; dforge.yaml says where a mounted one's keys are.
  const source = keySourceFor({...(await keySettings(dir)), masterKeyProvider: state.provider}, dir, options.env);
  const entries: string[] = [];
  const versions: number[] = [];
  for (const v of state.versions) {
    if (v.destroyedAt !== undefined) continue;
    const material = await source.material(v);
    if (!material) continue;
    if (!timingSafeEqual(keyCheckValue(material), Buffer.from(v.keyCheck, 'hex'))) {
      throw new UserError(`the material found for master version ${v.version} does not match its key check value; nothing was exported`, {
        nextSteps: ['Check which key the provider hands out (secrets/master/, DFORGE_MASTER_KEY or the passphrase), then re-run.'],
      });
    }
    entries.push(`${v.version}:${material.toString('base64')}`);
    versions.push(v.version);
  }
  if (versions.length === 0) {
    throw new UserError('no master key material could be read, so there is nothing to export', {
      nextSteps: [...state.versions.filter((v) => v.destroyedAt === undefined).map((v) => source.missingStep(v.version)), 'Then re-run.'],
    });
  }
  const body: ExportFile = {
    format: 'dforge-master-key-export/1',
    exportedAt: (options.clock?.() ?? new Date()).toISOString(),
    install: dir.root,
    DFORGE_MASTER_KEY: entries.join(','),
    keyring: state,
  };
  return withOpsRecord(dir, {action: 'keys.export-master', target: 'master', details: (r) => ({file: r.file, versions: r.versions})}, async () => {
    let handle: fs.FileHandle;
    try {
      // O_EXCL: an existing file (an earlier export, or anything else) is never replaced; O_NOFOLLOW: nor a symlink's target.
      handle = await fs.open(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new UserError(code === 'EEXIST' ? `${target} already exists; the master key is never written over a file` : `cannot create ${target}: ${(err as Error).message}`, {
        nextSteps: [code === 'EEXIST' ? 'Choose a new file name, or move the existing file away first.' : 'Choose a file in a directory you can write to, off this host if you can (a USB key, a password manager).'],
      });
    }
    try {
      // The mode given to open() is subject to the umask; 0600 is the point, whatever the umask.
      await handle.chmod(0o600);
      await handle.writeFile(`${JSON.stringify(body, null, 2)}\n`);
      await handle.sync();
    } catch (err) {
      // A half-written export would pass for a key file: remove it.
      await handle.close().catch(() => undefined);
      await fs.rm(target, {force: true});
      throw err;
    }
    await handle.close();
    return {file: target, versions};
  });
}
