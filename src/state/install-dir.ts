import {promises as fs} from 'node:fs';
import path from 'node:path';

import {UserError} from '../errors.js';
import {writeFileAtomic} from './atomic-file.js';

export const SECRET_DIR_MODE = 0o700;
export const SECRET_FILE_MODE = 0o600;
const PUBLIC_DIR_MODE = 0o755;

/** One finding of a permission audit of `secrets/`. */
export interface PermissionProblem {
  readonly path: string;
  readonly mode: string;
  readonly expected: string;
}

/**
 * The install directory (DESIGN §4): the paths inside it and the rules for writing them.
 * It knows nothing about what the files mean; services decide that.
 */
export class InstallDir {
  readonly root: string;

  constructor(root: string) {
    this.root = path.resolve(root);
  }

  get configFile(): string {
    return path.join(this.root, 'dforge.yaml');
  }

  get secretsDir(): string {
    return path.join(this.root, 'secrets');
  }

  get renderedDir(): string {
    return path.join(this.root, 'rendered');
  }

  get runtimeDir(): string {
    return path.join(this.root, 'runtime');
  }

  /**
   * Short-lived credential files of the libpq tools (pg_dump, pg_restore), one private directory
   * per session: see backup/credential-dir.ts.
   */
  get libpqSessionsDir(): string {
    return path.join(this.root, 'run', 'libpq');
  }

  /** Lock files: private, because a holder record names the command line an operator ran. */
  get locksDir(): string {
    return path.join(this.root, '.locks');
  }

  /** Creates the layout; existing directories keep their contents, and their modes are corrected. */
  async ensureLayout(): Promise<void> {
    await fs.mkdir(this.root, {recursive: true, mode: PUBLIC_DIR_MODE});
    await ensureDir(this.secretsDir, SECRET_DIR_MODE);
    await ensureDir(this.locksDir, SECRET_DIR_MODE);
    await ensureDir(this.renderedDir, PUBLIC_DIR_MODE);
    await ensureDir(this.runtimeDir, SECRET_DIR_MODE);
  }

  /** Path of a secret, refusing names that could escape `secrets/`. */
  secretPath(name: string): string {
    if (!/^[a-z0-9][a-z0-9._-]*(\/[a-z0-9][a-z0-9._-]*)*$/.test(name) || name.split('/').includes('..')) {
      throw new UserError(`invalid secret name ${JSON.stringify(name)}`, {
        nextSteps: ['Secret names use lowercase letters, digits, ".", "_" and "-", with "/" between path segments.'],
      });
    }
    return path.join(this.secretsDir, name);
  }

  /** Writes a secret atomically: 0600 in a 0700 directory from the first byte on disk. */
  async writeSecret(name: string, data: string | Uint8Array): Promise<string> {
    const file = this.secretPath(name);
    await ensureDir(this.secretsDir, SECRET_DIR_MODE);
    await ensureDir(path.dirname(file), SECRET_DIR_MODE);
    await writeFileAtomic(file, data, {mode: SECRET_FILE_MODE});
    return file;
  }

  async readSecret(name: string): Promise<Buffer> {
    return fs.readFile(this.secretPath(name));
  }

  /** Every directory under `secrets/` must be 0700 and every file 0600; this lists the exceptions. */
  async auditSecretPermissions(): Promise<PermissionProblem[]> {
    const problems: PermissionProblem[] = [];
    const visit = async (dir: string): Promise<void> => {
      const st = await fs.lstat(dir).catch(() => undefined);
      if (!st) return;
      if ((st.mode & 0o777) !== SECRET_DIR_MODE) problems.push(problem(dir, st.mode, SECRET_DIR_MODE));
      for (const entry of await fs.readdir(dir, {withFileTypes: true})) {
        const full = path.join(dir, entry.name);
        if (entry.isDirectory()) {
          await visit(full);
        } else {
          const fst = await fs.lstat(full);
          if ((fst.mode & 0o777) !== SECRET_FILE_MODE) problems.push(problem(full, fst.mode, SECRET_FILE_MODE));
        }
      }
    };
    await visit(this.secretsDir);
    return problems;
  }
}

async function ensureDir(dir: string, mode: number): Promise<void> {
  await fs.mkdir(dir, {recursive: true, mode});
  // mkdir honours the umask and leaves existing directories alone; chmod makes the mode exact.
  await fs.chmod(dir, mode);
}

function problem(file: string, mode: number, expected: number): PermissionProblem {
  return {path: file, mode: (mode & 0o777).toString(8).padStart(4, '0'), expected: expected.toString(8).padStart(4, '0')};
}
