import {spawn} from 'node:child_process';
import {constants} from 'node:os';

import {Flags} from '@oclif/core';

import {libpqSession} from '../../backup/pg-tools.js';
import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {findPostgresBinaries, pgToolPath} from '../../postgres/binaries.js';
import {psqlTarget} from '../../tenants/credentials.js';

export default class DbPsql extends BaseCommand<typeof DbPsql> {
  static override summary = 'Open psql as a tenant (--tenant) or as the provisioner on dforge_control, over verified TLS.';
  static override description = `Runs the host's psql with sslmode=verify-full against the install CA. The password goes through a 0600 passfile in a private directory of the install that is removed when psql exits or is interrupted: never argv, never the environment. Arguments after -- go to psql unchanged. The exit code is psql's.
Without --tenant the session is the provisioner's on dforge_control (the role dforge works as; it cannot bypass the provisioning interface). Each session is recorded in the ops log.`;
  static override examples = ['<%= config.bin %> db psql --tenant acme', "<%= config.bin %> db psql --tenant acme -- -c 'select current_user'", '<%= config.bin %> db psql'];
  static override strict = false;
  // psql writes its own output; there is no dforge result to print as JSON.
  static override enableJsonFlag = false;

  static override flags = {tenant: Flags.string({summary: "Connect as this tenant's role to its database."})};

  async run(): Promise<undefined> {
    const dir = this.installDir();
    const psql = pgToolPath(findPostgresBinaries(), 'psql');
    const target = await usingControlPlane(dir, (plane) => psqlTarget(plane, this.flags.tenant));
    const session = await libpqSession(dir, target.endpoint, target);
    try {
      // The operator's own environment (HOME for ~/.psqlrc, TERM, PAGER, the locale), minus any PG*
      // variable that would point psql elsewhere and every DFORGE_* one (the master key or its
      // passphrase may be among them, and psql hands its environment to \! shells and pagers),
      // plus the session's.
      const own = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('PG') && !name.startsWith('DFORGE_')));
      const {LC_ALL: _c, PATH: _p, ...libpq} = session.env;
      process.exitCode = await runInteractive(psql, this.positionals, {...own, ...libpq});
    } finally {
      await session.close();
    }
    return undefined;
  }
}

/**
 * Runs psql on this terminal and resolves with its exit code. Ctrl-C reaches psql and dforge alike
 * (one foreground process group); psql cancels its query with it, so dforge must not die of it and
 * leave psql behind: it waits instead. A TERM or HUP sent to dforge is passed on to psql.
 */
function runInteractive(binary: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(binary, args, {env, stdio: 'inherit'});
    const ignore = (): void => undefined;
    const forward = (signal: NodeJS.Signals): void => void child.kill(signal);
    process.on('SIGINT', ignore);
    process.on('SIGQUIT', ignore);
    process.on('SIGTERM', forward);
    process.on('SIGHUP', forward);
    const done = (): void => {
      process.removeListener('SIGINT', ignore);
      process.removeListener('SIGQUIT', ignore);
      process.removeListener('SIGTERM', forward);
      process.removeListener('SIGHUP', forward);
    };
    child.once('error', (err) => {
      done();
      reject(err);
    });
    child.once('close', (code, signal) => {
      done();
      resolve(code ?? 128 + (signal ? constants.signals[signal] : 0));
    });
  });
}
