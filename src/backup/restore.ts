import type {Client} from 'pg';

import type {ControlPlane} from '../control/plane.js';
import {UsageError, UserError, VerificationError} from '../errors.js';
import {restoreRoleOf} from '../postgres/provisioner.js';
import {randomPassword, scramVerifier} from '../postgres/scram.js';
import {keptAsideAt, previousDatabaseName, scratchDatabaseOf, type TenantDatabases} from '../tenants/databases.js';
import {MODULE_SCHEMAS} from '../tenants/module-sql.js';
import type {Tenant} from '../tenants/registry.js';
import {validateSlug} from '../tenants/slug.js';
import {checkRegion, recordCrossing, type CrossRegionApproval} from '../residency/policy.js';
import {crashPoint} from '../state/crash-point.js';
import {startPgTool} from './pg-tool-runner.js';
import {restorableEntries} from './pg-tools.js';
import {authenticateBackup, decryptAndList, feedDecryptedDump, resolveSource, type AuthenticatedBackup, type TableOfContents} from './verify.js';

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
  {toc: 'TABLE', sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dforge_guard') AND n.nspname NOT LIKE 'pg_toast%'"},
  {toc: 'SEQUENCE', sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dforge_guard')"},
  {toc: 'VIEW', sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dforge_guard')"},
  {toc: 'MATERIALIZED VIEW', sql: "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'm' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dforge_guard')"},
  {toc: 'FUNCTION', sql: "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.prokind IN ('f', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'dforge_guard')"},
  {toc: 'BLOB', sql: 'SELECT count(*) FROM pg_largeobject_metadata'},
];

/**
 * Restores a tenant backup without ever touching the live database until the end:
 *  1. verify: authenticate the header and bind it to the catalog entry, the manifest and the
 *     file's place, then decrypt everything through pg_restore --list (checking the file's digest
 *     on the way), so a tampered, substituted or truncated backup fails before any database is created;
 *  2. stream the decrypted dump into a scratch database cloned from the tenant template, as the
 *     restore role (see restoreInto), then adopt it in dforge's shape;
 *  3. check the restored object counts against the dump's table of contents;
 *  4. end the live database's sessions and swap: both renames in one transaction (retried if a
 *     client slips in), keeping the old one as <db>__pre_restore_<ts> (undoRestore swaps it back).
 * A failure in steps 1-3 drops the scratch database and leaves the live one as it was. With `as`,
 * the backup becomes a new tenant with new credentials and its own data key. A restore in place
 * replaces a live database, so `confirm` must repeat the slug (see requireConfirmation).
 */
export async function restoreTenant(
  plane: ControlPlane,
  options: {tenant: string; from: string; as?: string; toRegion?: string; approval?: CrossRegionApproval; dropPrevious?: boolean; confirm?: string; clock?: () => Date},
): Promise<RestoreResult> {
  const now = (options.clock ?? (() => new Date()))();
  const sourceTenant = validateSlug(options.tenant);
  if (options.as !== undefined && options.toRegion !== undefined) declaredRegion(plane, options.toRegion);
  // Checked before anything is read: a restore in place must never start on a wrong answer.
  if (options.as === undefined) {
    requireConfirmation(sourceTenant, options.confirm, {replacing: `the database of tenant ${sourceTenant}`, command: restoreCommand(sourceTenant, options.from, options.dropPrevious)});
  }
  const existing = options.as === undefined ? await restoreTarget(plane, sourceTenant, options.from, options.toRegion) : undefined;
  // Nothing is decided on the header before it is authenticated and bound to catalog and manifest.
  const auth = await authenticateBackup(plane, await resolveSource(plane, options.from));
  const label = auth.source.label;
  if (auth.header.kind !== 'tenant') throw new UserError(`${label} is a control-database backup`, {nextSteps: ['Restore it with: dforge restore --control --from <id|file>']});
  // The header is authenticated by now: a backup of another tenant is the operator's mix-up, not tampering.
  if (auth.header.tenant !== sourceTenant) {
    throw new UserError(`${label} is a backup of tenant ${auth.header.tenant}, not ${sourceTenant}; nothing was changed`, {
      nextSteps: [
        `To restore ${auth.header.tenant} from it: ${restoreCommand(auth.header.tenant, options.from)}`,
        `To copy ${auth.header.tenant}'s data into a new tenant: dforge restore --tenant ${auth.header.tenant} --from ${options.from} --as <new-slug>`,
      ],
      data: {reason: 'tenant', backupId: auth.header.backupId, tenant: auth.header.tenant},
    });
  }
  // The backup's data is of the region its (authenticated) header names; where it lands is checked
  // before any database or tenant exists, and an approved crossing is recorded before either does.
  // --as defaults to the source tenant's pin, not the backup's region: an approval that sent a
  // backup abroad covered a copy there, never a live tenant there. A deleted tenant has no pin left.
  const registry = options.as === undefined ? [] : await plane.tenants.list();
  const pinned = registry.find((t) => t.slug === sourceTenant)?.region;
  const region = existing?.region ?? options.toRegion ?? pinned ?? auth.header.region;
  const crossing = checkRegion(
    plane.config,
    options.as === undefined
      ? {tenant: sourceTenant, from: auth.header.region, to: region, operation: 'restore', what: `restore of ${label} (of region ${auth.header.region}) over tenant ${sourceTenant}`, rerun: restoreCommand(sourceTenant, options.from, options.dropPrevious)}
      : {tenant: sourceTenant, from: auth.header.region, to: region, operation: 'restore-as', what: `restore of ${label} as new tenant ${options.as} in region ${region}`, rerun: `dforge restore --tenant ${sourceTenant} --from ${options.from} --as ${options.as} --to-region ${region}`},
    options.approval,
  );
  // Every refusal comes before the crossing is recorded, so the ops log never shows a transfer
  // that did not happen: a slug in use for --as is refused here, not by create afterwards.
  if (options.as !== undefined && registry.some((t) => t.slug === options.as)) {
    throw new UserError(`tenant ${options.as} already exists: restore --as makes a new tenant; nothing was changed`, {
      nextSteps: [`Pick another slug, or restore over it in place: ${restoreCommand(options.as, options.from)}`],
      data: {tenant: options.as},
    });
  }
  const toc = await decryptAndList(plane, auth);
  if (crossing) await recordCrossing(plane, plane.config, crossing);

  let target: Tenant;
  if (options.as) {
    target = (await plane.tenants.create(validateSlug(options.as), {region})).tenant;
    crashPoint('restore.as-tenant-created');
  } else {
    target = existing!;
    if (await plane.tenants.ensureRole(sourceTenant)) crashPoint('restore.role-recreated');
  }
  try {
    // With --as, the database being replaced is the new tenant's empty one: nothing to keep.
    return await restoreInto(plane, {target, auth, toc, now, as: options.as !== undefined, dropPrevious: options.as !== undefined || (options.dropPrevious ?? false)});
  } catch (err) {
    // A tenant made for --as holds nothing yet: take it away again rather than leave an empty copy.
    if (options.as) await plane.tenants.delete(target.slug, {confirm: target.slug, shred: true}).catch(() => undefined);
    throw err;
  }
}

/** The command that restores `slug` in place from `from`, confirmation included. */
export const restoreCommand = (slug: string, from: string, dropPrevious = false): string => `dforge restore --tenant ${slug} --from ${from}${dropPrevious ? ' --drop-previous' : ''} --confirm ${slug}`;

/** The command that undoes the last restore of `slug`. */
export const undoCommand = (slug: string): string => `dforge restore --undo ${slug} --confirm ${slug}`;

/**
 * Replacing a live database (a tenant's by a restore in place or an undo, dforge_control by a
 * control restore) needs its name repeated: the tenant's slug, or dforge_control. The command asks
 * for it (src/ui/confirm.ts); this is the check every caller goes through.
 */
export function requireConfirmation(expected: string, confirm: string | undefined, o: {replacing: string; command: string}): void {
  if (confirm === expected) return;
  throw new UsageError(confirm === undefined ? `replacing ${o.replacing} needs --confirm ${expected}` : `refusing to replace ${o.replacing}: --confirm must be exactly ${expected}`, {
    nextSteps: [`Run: ${o.command}`],
  });
}

/**
 * The registered tenant a restore in place replaces. A deleted tenant has nothing to restore
 * over; its backups (kept under its retained data keys) come back as a new tenant of that slug.
 * A restore in place never changes the tenant's region (`toRegion` other than its own is
 * refused): a pin changes only by a move.
 */
export async function restoreTarget(plane: ControlPlane, slugInput: string, from: string, toRegion?: string): Promise<Tenant> {
  const slug = validateSlug(slugInput);
  if (toRegion !== undefined) declaredRegion(plane, toRegion);
  const registered = (await plane.tenants.list()).find((t) => t.slug === slug);
  // Resolved through the service, so a tenant whose cluster left its region is refused here, before the backup is read.
  const tenant = registered ? await plane.tenants.get(slug) : undefined;
  if (!tenant) {
    throw new UserError(`no tenant ${slug}: it was deleted (or never created), so there is no database to restore over`, {
      nextSteps: [`Restore the backup as a new tenant with that slug: dforge restore --tenant ${slug} --from ${from} --as ${slug}`, 'List the current tenants with: dforge tenant list'],
      data: {tenant: slug},
    });
  }
  if (toRegion !== undefined && toRegion !== tenant.region) {
    throw new UserError(`refusing to restore tenant ${slug} in place into region ${toRegion}: it is pinned to region ${tenant.region}, and a restore in place keeps it there; nothing was changed`, {
      nextSteps: [`Move the tenant first: dforge tenant move ${slug} --to-region ${toRegion}`, `Or restore a copy there: dforge restore --tenant ${slug} --from ${from} --as <new-slug> --to-region ${toRegion}`],
      data: {tenant: slug, region: tenant.region, toRegion},
    });
  }
  return tenant;
}

/** A region named on the command line must be declared in dforge.yaml. */
function declaredRegion(plane: ControlPlane, region: string): void {
  if (plane.config.regions[region]) return;
  throw new UsageError(`region ${region} is not declared in dforge.yaml`, {nextSteps: [`Use one of: ${Object.keys(plane.config.regions).join(', ')}`]});
}

/** A verified backup and where it goes. */
interface RestorePlan {
  readonly target: Tenant;
  readonly auth: AuthenticatedBackup;
  /** The dump's table of contents. */
  readonly toc: TableOfContents;
  readonly now: Date;
  readonly as: boolean;
  readonly dropPrevious: boolean;
}

/**
 * The load runs as the short-lived restore role (session_user), which is a NOINHERIT member of the
 * tenant's login role and of nothing else: code the dump carries (CHECK constraints, domain
 * checks, generated columns, index expressions, materialized views…) runs with no more power
 * than the tenant's own, even after a RESET ROLE. The provisioner then adopts the result as the
 * owner role, touching catalogs only, and swaps it in.
 */
async function restoreInto(plane: ControlPlane, plan: RestorePlan): Promise<RestoreResult> {
  const {target, auth, toc, now} = plan;
  return plane.tenants.withTenantLock(target.slug, plan.as ? 'tenant.restore-as' : 'tenant.restore', () =>
    plane.tenants.onTenantCluster(target.slug, async (databases) => {
      const scratch = scratchDatabaseOf(target);
      const restoreRole = restoreRoleOf(target.role);
      // A killed restore's scratch database and role: never live, safe to drop under the tenant lock.
      await databases.drop(scratch);
      await databases.roles.dropRestoreRole(target.role);
      let counts: Record<string, number> | undefined;
      try {
        await databases.clone(scratch);
        crashPoint('restore.scratch-created');
        const password = randomPassword();
        await databases.roles.createRestoreRole(target.role, scramVerifier(password));
        crashPoint('restore.restore-role-created');
        // The schemas and the audit trail exist, owned by the owner role, before any dump code runs.
        await databases.shape(scratch, {connect: [restoreRole]});
        crashPoint('restore.scratch-prepared');
        // Objects are created as the tenant's login role (--role), so it owns its tables as before.
        await restoreDump(plane, {auth, cluster: target.cluster, credentials: {user: restoreRole, password, database: scratch}, args: [`--role=${target.role}`], useList: restorableEntries(toc.list, MODULE_SCHEMAS)});
        crashPoint('restore.loaded');
        counts = await databases.shape(scratch, {connect: [target.role], revoke: [restoreRole]}, (inside) => checkCounts(inside, toc));
        crashPoint('restore.shaped');
        await databases.roles.dropRestoreRole(target.role);
        crashPoint('restore.restore-role-dropped');
      } catch (err) {
        await databases.drop(scratch).catch(() => undefined);
        await databases.roles.dropRestoreRole(target.role).catch(() => undefined);
        throw err;
      }
      const previous = await swap(databases, target, await databases.previousName(now));
      crashPoint('restore.swap-committed');
      if (previous && plan.dropPrevious) {
        await databases.drop(previous);
        crashPoint('restore.previous-dropped');
      }
      return {tenant: target.slug, backupId: auth.header.backupId, database: target.database, previousDatabase: plan.dropPrevious ? null : previous, objects: counts!};
    }),
  );
}

/** Streams a verified backup's dump through pg_restore into `credentials.database`; any failure stops pg_restore. */
export async function restoreDump(
  plane: ControlPlane,
  o: {auth: AuthenticatedBackup; cluster: string; credentials: {user: string; password: string; database: string}; args: string[]; useList?: string},
): Promise<void> {
  const pgRestore = await startPgTool(plane, {
    tool: 'pg_restore',
    args: ['--dbname', o.credentials.database, ...o.args, '--no-owner', '--no-privileges', '--exit-on-error'],
    cluster: o.cluster,
    credentials: o.credentials,
    serverMajor: Math.floor(Number(o.auth.header.pgVersion) / 10_000),
    useList: o.useList,
  });
  try {
    await feedDecryptedDump(o.auth, pgRestore);
    await pgRestore.done;
  } finally {
    await pgRestore.close();
  }
}

/** Compares the restored objects with the dump's table of contents (catalog queries only). */
async function checkCounts(db: Client, toc: TableOfContents): Promise<Record<string, number>> {
  const counts: Record<string, number> = {};
  for (const {toc: type, sql} of CHECKED) {
    const expected = toc.counts.get(type) ?? 0;
    const actual = Number((await db.query<{count: string}>(sql)).rows[0]!.count);
    counts[type] = actual;
    if (actual !== expected) {
      throw new VerificationError(`the restored database has ${actual} ${type.toLowerCase()} object(s), the backup lists ${expected}`, {
        nextSteps: ['Nothing was swapped in; the live database is unchanged. Check the server log, then retry or use another backup.'],
      });
    }
  }
  return counts;
}

/** Renames live -> previous and scratch -> live in one transaction (inside the interface), its sessions ended. */
async function swap(databases: TenantDatabases, tenant: Tenant, previous: string): Promise<string | null> {
  return (await withoutSessions(databases, tenant, () => databases.roles.swap(tenant.role, previous))) ? previous : null;
}

/**
 * Ends the tenant's sessions and runs `rename` (renames of its databases in one transaction). A
 * client connecting in between makes the rename fail; it is retried.
 */
async function withoutSessions<T>(databases: TenantDatabases, tenant: Tenant, rename: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    await databases.roles.terminateSessions(tenant.role);
    try {
      return await rename();
    } catch (err) {
      // 55006: the database is being accessed by other users.
      if ((err as {code?: string}).code !== '55006' || attempt >= 10) throw err;
      await new Promise((r) => setTimeout(r, 100 * attempt));
    }
  }
}

export interface UndoResult {
  readonly tenant: string;
  readonly database: string;
  /** The kept database that is live again. */
  readonly restoredDatabase: string;
  /** When a restore (or an earlier undo) set it aside, from its name. */
  readonly keptSince: string;
  /** Where the database it replaced is kept: undoing again swaps that one back. */
  readonly previousDatabase: string;
}

/** What an undo would do, read only: for the confirmation, which must name it before anything changes. */
export async function planUndo(plane: ControlPlane, options: {tenant: string; clock?: () => Date}): Promise<Omit<UndoResult, 'tenant'> & {tenant: Tenant}> {
  const now = (options.clock ?? (() => new Date()))();
  return plane.tenants.onTenantCluster(options.tenant, async (databases, tenant) => ({tenant, ...(await undoStep(databases, tenant, now))}));
}

/**
 * Undoes the last restore of a tenant: ends its sessions and swaps the newest database a restore
 * kept aside back in, both renames in one transaction (as the restore's swap). The database it
 * replaces is kept under a new <db>__pre_restore_<ts> name, newer than any other, so an undo is
 * itself undone by running it again; prune drops it like any kept database.
 */
export async function undoRestore(
  plane: ControlPlane,
  options: {tenant: string; confirm?: string; clock?: () => Date; planned?: Pick<UndoResult, 'restoredDatabase' | 'previousDatabase'>},
): Promise<UndoResult> {
  const now = (options.clock ?? (() => new Date()))();
  const slug = validateSlug(options.tenant);
  requireConfirmation(slug, options.confirm, {replacing: `the database of tenant ${slug}`, command: undoCommand(slug)});
  return plane.tenants.withTenantLock(slug, 'tenant.restore-undo', () =>
    plane.tenants.onTenantCluster(slug, async (databases, tenant) => {
      const chosen = await undoStep(databases, tenant, now);
      // The operator confirmed one database by name; a restore, undo or prune that finished since
      // would make this pick another, which nobody confirmed.
      if (options.planned && chosen.restoredDatabase !== options.planned.restoredDatabase) {
        throw new UserError(`the database to swap back for tenant ${slug} changed after you confirmed: ${options.planned.restoredDatabase} was confirmed, ${chosen.restoredDatabase} is now the newest kept; nothing was changed`, {
          nextSteps: [`Check what another run did (dforge audit tail), then run again: ${undoCommand(slug)}`],
          data: {tenant: slug, confirmed: options.planned.restoredDatabase, now: chosen.restoredDatabase},
        });
      }
      const step = options.planned ? {...chosen, previousDatabase: options.planned.previousDatabase} : chosen;
      await withoutSessions(databases, tenant, () => databases.roles.swapBack(tenant.role, step.restoredDatabase, step.previousDatabase));
      return {tenant: tenant.slug, ...step};
    }),
  );
}

/** The newest kept database and the name the live one will be kept under; a refusal naming what exists if none is kept. */
async function undoStep(databases: TenantDatabases, tenant: Tenant, now: Date): Promise<Omit<UndoResult, 'tenant'>> {
  const all = await databases.all();
  const kept = all
    .flatMap((name) => {
      const at = keptAsideAt(tenant, name);
      return at ? [{name, at}] : [];
    })
    .sort((a, b) => b.at.getTime() - a.at.getTime());
  const newest = kept[0];
  if (!newest) {
    throw new UserError(`tenant ${tenant.slug} has no earlier database to swap back in: no restore kept one (a restore with --drop-previous, or a prune, removes it)`, {
      nextSteps: [`Its databases now: ${all.length > 0 ? all.join(', ') : 'none'}`, `Restore an earlier backup instead: dforge backup list --tenant ${tenant.slug}, then dforge restore --tenant ${tenant.slug} --from <id> --confirm ${tenant.slug}`],
      data: {tenant: tenant.slug, databases: all},
    });
  }
  // Names carry whole seconds: the replaced database's must sort after the one coming back.
  const keptAt = new Date(Math.max(now.getTime(), newest.at.getTime() + 1000));
  return {database: tenant.database, restoredDatabase: newest.name, keptSince: newest.at.toISOString(), previousDatabase: previousDatabaseName(tenant, keptAt)};
}
