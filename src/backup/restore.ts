import type {Client} from 'pg';

import {PROVISIONER_ROLE} from '../control/bootstrap.js';
import {endpointOf, provisionerSecret, type ControlPlane} from '../control/plane.js';
import {UserError, VerificationError} from '../errors.js';
import {withConnection, type ClusterEndpoint} from '../postgres/connect.js';
import {terminateSessions} from '../postgres/sessions.js';
import {escapeIdentifier} from '../postgres/sql.js';
import type {Tenant} from '../tenants/service.js';
import {validateSlug} from '../tenants/slug.js';
import {openHeader, type ParsedHeader} from './format.js';
import {startPgTool} from './pg-tool-runner.js';
import {checkIntegrity, decryptAndList, feedDecryptedDump, readBackupHeader, resolveSource, wrapperFor, type BackupSource} from './verify.js';

export interface RestoreResult {
  readonly tenant: string;
  readonly backupId: string;
  readonly database: string;
  /** The database that was live before, kept until --drop-previous or a prune; null if none was. */
  readonly previousDatabase: string | null;
  readonly objects: Record<string, number>;
}

/** Object types whose counts must agree between the dump's table of contents and the restored database. */
const CHECKED: ReadonlyArray<{toc: string; sql: string}> = [
  {toc: 'TABLE', sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"},
  {toc: 'SEQUENCE', sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"},
  {toc: 'VIEW', sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"},
  {toc: 'FUNCTION', sql: "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.prokind IN ('f', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"},
  {toc: 'BLOB', sql: 'SELECT count(*) FROM pg_largeobject_metadata'},
];

/** Database names stay within PostgreSQL's 63-byte identifier limit, whatever the slug length. */
function derivedName(database: string, tag: string, now: Date): string {
  const ts = Math.floor(now.getTime() / 1000).toString(36);
  const long = `${database}_${tag}_${ts}`;
  return long.length <= 63 ? long : `${database}_${tag.slice(0, 2)}_${ts}`;
}

/**
 * Restores a tenant backup without ever touching the live database until the end:
 *  1. verify: integrity against the manifest, then decrypt everything through pg_restore --list,
 *     so a tampered or truncated backup fails before any database is created;
 *  2. stream the decrypted dump into a new scratch database owned by the tenant role;
 *  3. check the restored object counts against the dump's table of contents;
 *  4. end the live database's sessions and swap: both renames in one transaction (retried if a
 *     client slips in), keeping the old one as <db>_pre_restore_<ts>.
 * A failure in steps 1-3 drops the scratch database and leaves the live one as it was. With `as`,
 * the backup becomes a new tenant with new credentials and its own data key.
 */
export async function restoreTenant(
  plane: ControlPlane,
  options: {tenant: string; from: string; as?: string; dropPrevious?: boolean; clock?: () => Date},
): Promise<RestoreResult> {
  const now = (options.clock ?? (() => new Date()))();
  const sourceTenant = validateSlug(options.tenant);
  const source = await resolveSource(plane, options.from);
  await checkIntegrity(source);
  const parsed = await readBackupHeader(source);
  if (parsed.header.kind !== 'tenant') throw new UserError(`${source.label} is a control-database backup`, {nextSteps: ['Restore it with: dforge restore --control --from <id|file>']});
  if (parsed.header.tenant !== sourceTenant) {
    throw new VerificationError(`${source.label} belongs to tenant ${parsed.header.tenant}, not ${sourceTenant}`, {
      nextSteps: [`To copy ${parsed.header.tenant}'s data into a new tenant: dforge restore --tenant ${parsed.header.tenant} --from ${options.from} --as <new-slug>`],
    });
  }
  const wrapper = await wrapperFor(plane, parsed, source.label);
  const toc = await decryptAndList(plane, source, parsed, wrapper);
  const payloadKey = await openHeader(parsed, wrapper, source.label);

  let target: Tenant;
  if (options.as) {
    target = (await plane.tenants.create(validateSlug(options.as))).tenant;
  } else {
    target = await plane.tenants.get(sourceTenant);
    await plane.tenants.ensureRole(sourceTenant);
  }
  try {
    // With --as, the database being replaced is the new tenant's empty one: nothing to keep.
    return await restoreInto(plane, {target, source, parsed, payloadKey, toc, now, as: options.as !== undefined, dropPrevious: options.as !== undefined || (options.dropPrevious ?? false)});
  } catch (err) {
    // A tenant made for --as holds nothing yet: take it away again rather than leave an empty copy.
    if (options.as) await plane.tenants.delete(target.slug, {confirm: target.slug, shred: true}).catch(() => undefined);
    throw err;
  }
}

/** A verified backup and where it goes. */
interface RestorePlan {
  readonly target: Tenant;
  readonly source: BackupSource;
  readonly parsed: ParsedHeader;
  readonly payloadKey: Buffer;
  /** Object counts from the dump's table of contents. */
  readonly toc: Map<string, number>;
  readonly now: Date;
  readonly as: boolean;
  readonly dropPrevious: boolean;
}

async function restoreInto(plane: ControlPlane, plan: RestorePlan): Promise<RestoreResult> {
  const {target, source, parsed, payloadKey, toc, now} = plan;
  const endpoint = await endpointOf(plane.keys.dir, plane.config, target.cluster);
  const provisionerPassword = (await plane.keys.sealed.get(provisionerSecret(target.cluster))).toString('utf8');

  return plane.tenants.withTenantLock(target.slug, plan.as ? 'tenant.restore-as' : 'tenant.restore', () =>
    plane.tenants.onTenantCluster(target.slug, async (c) => {
      const role = escapeIdentifier(target.role);
      const scratch = derivedName(target.database, 'restore', now);
      const dropScratch = (): Promise<unknown> => plane.tenants.actingAs(c, target.role, () => c.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(scratch)}`));
      await dropLeftoverScratch(plane, c, target);
      await plane.tenants.asMemberOf(c, target.role, () => c.query(`CREATE DATABASE ${escapeIdentifier(scratch)} OWNER ${role} TEMPLATE template0 ENCODING 'UTF8'`));
      await plane.tenants.actingAs(c, target.role, () => c.query(`REVOKE ALL ON DATABASE ${escapeIdentifier(scratch)} FROM PUBLIC`));
      let counts: Record<string, number>;
      try {
        await plane.tenants.asMemberOf(c, target.role, async () => {
          // Objects are created as the tenant role (--role), so it owns everything it restores.
          await restoreDump(plane, {source, parsed, payloadKey, cluster: target.cluster, credentials: {user: PROVISIONER_ROLE, password: provisionerPassword, database: scratch}, args: [`--role=${target.role}`]});
        });
        counts = await checkCounts(plane, c, target, {endpoint, scratch, provisionerPassword}, toc);
      } catch (err) {
        await dropScratch();
        throw err;
      }
      const previous = await swap(plane, c, target, scratch, derivedName(target.database, 'pre_restore', now));
      if (previous && plan.dropPrevious) {
        await plane.tenants.actingAs(c, target.role, () => c.query(`DROP DATABASE ${escapeIdentifier(previous)}`));
      }
      return {tenant: target.slug, backupId: parsed.header.backupId, database: target.database, previousDatabase: plan.dropPrevious ? null : previous, objects: counts};
    }),
  );
}

/** Streams a verified backup's dump through pg_restore into `credentials.database`; any failure stops pg_restore. */
export async function restoreDump(
  plane: ControlPlane,
  o: {source: BackupSource; parsed: ParsedHeader; payloadKey: Buffer; cluster: string; credentials: {user: string; password: string; database: string}; args: string[]},
): Promise<void> {
  const pgRestore = await startPgTool(plane, {
    tool: 'pg_restore',
    args: ['--dbname', o.credentials.database, ...o.args, '--no-owner', '--no-privileges', '--exit-on-error'],
    cluster: o.cluster,
    credentials: o.credentials,
    serverMajor: Math.floor(Number(o.parsed.header.pgVersion) / 10_000),
  });
  try {
    await feedDecryptedDump(o.source, o.parsed, o.payloadKey, pgRestore);
    await pgRestore.done;
  } finally {
    await pgRestore.close();
  }
}

/** Scratch databases of a killed restore: never live, safe to drop under the tenant lock. */
async function dropLeftoverScratch(plane: ControlPlane, c: Client, tenant: Tenant): Promise<void> {
  // Owned by this tenant's role and named like its scratch databases: another tenant's database
  // (say of slug acme-restore-1) has another owner and is never touched.
  const rows = await c.query<{datname: string}>(
    "SELECT datname FROM pg_database WHERE datname ~ ('^' || $1 || '_(restore|re)_[0-9a-z]+$') AND pg_get_userbyid(datdba) = $2",
    [tenant.database, tenant.role],
  );
  for (const {datname} of rows.rows) {
    await plane.tenants.actingAs(c, tenant.role, () => c.query(`DROP DATABASE ${escapeIdentifier(datname)}`));
  }
}

/** Compares the scratch database's objects with the dump's table of contents, on the session the restore already holds. */
async function checkCounts(
  plane: ControlPlane,
  c: Client,
  tenant: Tenant,
  where: {endpoint: ClusterEndpoint; scratch: string; provisionerPassword: string},
  toc: Map<string, number>,
): Promise<Record<string, number>> {
  return plane.tenants.asMemberOf(c, tenant.role, () =>
    withConnection(where.endpoint, {user: PROVISIONER_ROLE, password: where.provisionerPassword, database: where.scratch}, async (db) => {
      const counts: Record<string, number> = {};
      for (const {toc: type, sql} of CHECKED) {
        const expected = toc.get(type) ?? 0;
        const actual = Number((await db.query<{count: string}>(sql)).rows[0]!.count);
        counts[type] = actual;
        if (actual !== expected) {
          throw new VerificationError(`the restored database has ${actual} ${type.toLowerCase()} object(s), the backup lists ${expected}`, {
            nextSteps: ['Nothing was swapped in; the live database is unchanged. Check the server log, then retry or use another backup.'],
          });
        }
      }
      return counts;
    }),
  );
}

/**
 * Ends the live database's sessions and renames live -> previous and scratch -> live in one
 * transaction. A client connecting in between makes the rename fail; it is retried a few times.
 */
async function swap(plane: ControlPlane, c: Client, tenant: Tenant, scratch: string, previous: string): Promise<string | null> {
  const live = escapeIdentifier(tenant.database);
  return plane.tenants.asMemberOf(c, tenant.role, async () => {
    const hasLive = (await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [tenant.database])).rowCount === 1;
    for (let attempt = 1; ; attempt++) {
      await terminateSessions(c, {databases: [tenant.database, scratch]});
      try {
        await c.query('BEGIN');
        if (hasLive) await c.query(`ALTER DATABASE ${live} RENAME TO ${escapeIdentifier(previous)}`);
        await c.query(`ALTER DATABASE ${escapeIdentifier(scratch)} RENAME TO ${live}`);
        await c.query('COMMIT');
        return hasLive ? previous : null;
      } catch (err) {
        await c.query('ROLLBACK').catch(() => undefined);
        // 55006: the database is being accessed by other users.
        if ((err as {code?: string}).code !== '55006' || attempt >= 10) throw err;
        await new Promise((r) => setTimeout(r, 100 * attempt));
      }
    }
  });
}
