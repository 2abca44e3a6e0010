/**
 * The unprivileged account the embedded PostgreSQL server runs as.
 *
 * PostgreSQL refuses to start as root (a compromised server must not own the host), and dforge
 * usually runs as root on bare metal, so the server and its tools run under a system account.
 */

import {execFileSync} from 'node:child_process';
import {readFileSync} from 'node:fs';

import {UserError} from '../errors.js';

export interface ServiceAccount {
  readonly user: string;
  readonly uid: number;
  readonly gid: number;
  /** The primary group's name, or its number when /etc/group has no entry for it. */
  readonly group: string;
}

/** Installed by the distribution's PostgreSQL packages; preferred because the host's tooling already expects it. */
export const DISTRIBUTION_ACCOUNT = 'postgres';
/** Created by dforge when the distribution's account is absent. */
export const DFORGE_ACCOUNT = 'dforge-postgres';

const PASSWD = '/etc/passwd';
const GROUP = '/etc/group';

/**
 * Undefined when dforge itself is not root: the server then runs as the current user, who owns
 * the install directory. As root: the distribution's `postgres` account, else `dforge-postgres`,
 * created on first use.
 *
 * `nobody` is never used: every file it owns is shared with each other daemon running as
 * `nobody`, so one compromised service would be able to read the tenants' databases.
 */
export function serverAccount(): ServiceAccount | undefined {
  if (process.getuid?.() !== 0) return undefined;
  return lookupAccount(DISTRIBUTION_ACCOUNT) ?? lookupAccount(DFORGE_ACCOUNT) ?? createAccount();
}

function createAccount(): ServiceAccount {
  // --system: a uid below UID_MIN, with no password ageing and no mail spool.
  // --no-create-home, home /nonexistent: the server needs no home, so nothing is left behind to clean up or leak.
  // --shell nologin (and useradd's default locked password): nobody can log in or `su` to the account;
  //   it exists only to own the data directory and run the server.
  // --user-group: a private group, so group-readable files are readable by this account alone.
  const args = ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', '--user-group', '--comment', 'dforge embedded PostgreSQL', DFORGE_ACCOUNT];
  let failure = '';
  try {
    execFileSync('useradd', args, {stdio: ['ignore', 'ignore', 'pipe'], env: {PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LC_ALL: 'C'}, timeout: 60_000});
  } catch (err) {
    failure = (err as {stderr?: Buffer}).stderr?.toString('utf8').trim() || (err as Error).message;
  }
  // A concurrent dforge run may have created the account first, which is what useradd's failure then means.
  const account = lookupAccount(DFORGE_ACCOUNT);
  if (account) return account;
  throw new UserError(`could not create the system account ${DFORGE_ACCOUNT} to run PostgreSQL as${failure ? `: ${failure}` : ''}`, {
    nextSteps: [
      `Create it yourself, then re-run: useradd ${args.join(' ')}`,
      `Or install the distribution's PostgreSQL server package, which creates the ${DISTRIBUTION_ACCOUNT} account.`,
    ],
  });
}

function lookupAccount(user: string): ServiceAccount | undefined {
  const entry = readColonFile(PASSWD).find((fields) => fields[0] === user);
  if (!entry) return undefined;
  const uid = Number(entry[2]);
  const gid = Number(entry[3]);
  // A uid-0 alias named postgres would put the server back in root's hands.
  if (!Number.isInteger(uid) || !Number.isInteger(gid) || uid === 0) return undefined;
  const group = readColonFile(GROUP).find((fields) => Number(fields[2]) === gid)?.[0] ?? String(gid);
  return {user, uid, gid, group};
}

function readColonFile(file: string): string[][] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => line.split(':'));
}
