import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {connectionUri, libpqVariables, revealTenantPassword, shellExports, tenantConnection, writePgpass, type RevealForm, type TenantConnection} from '../../tenants/credentials.js';

export type TenantCredentialsResult = TenantConnection & {
  /** Which explicit form was asked for; absent when nothing secret was shown. */
  readonly form?: RevealForm;
  /** Only with --uri or --env. */
  readonly password?: string;
  readonly uri?: string;
  readonly env?: Readonly<Record<string, string>>;
  /** With --pgpass: the file written (the password is not printed). */
  readonly pgpass?: {readonly file: string; readonly replaced: boolean};
};

const REVEAL = ['uri', 'env', 'pgpass'] as const;

export default class TenantCredentials extends BaseCommand<typeof TenantCredentials> {
  static override summary = "Show how to connect to a tenant's database; its password only with --uri, --env or --pgpass.";
  static override description = `Prints the host, port, database, role and TLS settings (sslmode=verify-full, with the CA file to verify against) for connecting from this host. On compose, the address the app uses inside the stack is shown too.
The password is never shown by default. --uri prints a postgresql:// URI with it, --env prints export lines for libpq (eval "$(dforge tenant credentials acme --env)"), --pgpass FILE adds or updates the tenant's line in a 0600 pgpass file without printing it. Each of these is recorded in the ops log (which form, never the password).`;
  static override examples = [
    '<%= config.bin %> tenant credentials acme',
    'psql "$(<%= config.bin %> tenant credentials acme --uri)"',
    'eval "$(<%= config.bin %> tenant credentials acme --env)"',
    '<%= config.bin %> tenant credentials acme --pgpass ~/.pgpass',
  ];

  static override args = {slug: Args.string({required: true})};

  static override flags = {
    uri: Flags.boolean({summary: 'Print a postgresql:// URI, with the password.', exclusive: ['env', 'pgpass']}),
    env: Flags.boolean({summary: 'Print PG* export lines for a shell, with the password.', exclusive: ['uri', 'pgpass']}),
    pgpass: Flags.file({summary: "Add or update the tenant's line in this pgpass file (0600); prints no password.", exclusive: ['uri', 'env']}),
  };

  async run(): Promise<TenantCredentialsResult> {
    const form = REVEAL.find((f) => this.flags[f] !== undefined && this.flags[f] !== false);
    const result = await usingControlPlane(this.installDir(), async (plane): Promise<TenantCredentialsResult> => {
      const connection = await tenantConnection(plane, this.args.slug);
      if (!form) return connection;
      const password = await revealTenantPassword(plane, connection, form);
      switch (form) {
        case 'uri':
          return {...connection, form, password, uri: connectionUri(connection, password)};
        case 'env':
          return {...connection, form, password, env: Object.fromEntries(libpqVariables(connection, password))};
        case 'pgpass':
          return {...connection, form, pgpass: await writePgpass(this.flags.pgpass!, connection, password)};
      }
    });
    if (!this.jsonEnabled()) this.print(result);
    return result;
  }

  private print(r: TenantCredentialsResult): void {
    if (r.uri !== undefined) return this.log(r.uri);
    if (r.env !== undefined) return void process.stdout.write(shellExports(Object.entries(r.env)));
    const rows: Array<[string, string]> = [
      ['host', `${r.host} (from this host)`],
      ['port', String(r.port)],
      ['database', r.database],
      ['role', r.role],
      ['sslmode', r.sslmode],
      ['sslrootcert', r.sslrootcert],
      ...(r.app ? [['app address', `${r.app.host}:${r.app.port} (inside the stack; see runtime/tenants/catalog.json)`] as [string, string]] : []),
      ['password', r.pgpass ? `written to ${r.pgpass.file}` : 'not shown: --uri, --env or --pgpass FILE reveal it (recorded in the ops log)'],
    ];
    for (const [k, v] of rows) this.log(`${k.padEnd(14)} ${v}`);
    if (r.pgpass) this.out.progress(`${r.pgpass.replaced ? 'updated' : 'added'} the line for ${r.role}@${r.host}:${r.port}/${r.database} in ${r.pgpass.file}`);
  }
}
