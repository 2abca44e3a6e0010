import {CONTROL_DATABASE, PROVISIONER_ROLE} from '../control/bootstrap.js';
import {endpointOf, primaryCluster, provisionerSecret} from '../control/clusters.js';
import {openControlPlane, type ControlPlane} from '../control/plane.js';
import {UserError, VerificationError} from '../errors.js';
import {connect, withConnection} from '../postgres/connect.js';
import {terminateSessions} from '../postgres/sessions.js';
import {escapeIdentifier} from '../postgres/sql.js';
import type {InstallDir} from '../state/install-dir.js';
import {crashPoint} from '../state/crash-point.js';
import {CONTROL_OWNER, type BackupHeader} from './format.js';
import {rebuildCatalog, type RebuildResult} from './manage.js';
import type {PgToolsMode} from './pg-tools-mode.js';
import {requireConfirmation, restoreDump} from './restore.js';
import {regionDestinations} from './destination.js';
import {authenticateBackup, decryptAndList, destinationSource, resolveSource, type AuthenticatedBackup} from './verify.js';

export interface ControlRestoreResult {
  readonly backupId: string;
  readonly createdAt: string;
  readonly previousDatabase: string;
  /** What completing the catalog from the destinations found (see rebuildCatalog). */
  readonly catalog: RebuildResult;
  readonly tenants: number;
  /** The ops-log entry that records this restore and re-anchors the log. */
  readonly opsLogEntry: number;
}

/**
 * Disaster recovery of dforge_control (registry, sealed passwords, data keys, catalog, ops log) on
 * a freshly bootstrapped cluster, from a control backup encrypted under the master key. The newest
 * one in the primary region (by authenticated creation time) is used unless `from` names one. The
 * catalog is then completed from the destinations, adopting only files that authenticate and match
 * their manifest and place, so backups newer than the control backup are restorable too.
 * It always replaces the dforge_control that exists (a fresh one after db init, or a live one
 * whose keys and registry it would roll back), so `confirm` must be "dforge_control".
 */
export async function restoreControl(dir: InstallDir, options: {from?: string; confirm?: string; clock?: () => Date; pgTools?: PgToolsMode}): Promise<ControlRestoreResult> {
  requireConfirmation(CONTROL_DATABASE, options.confirm, {replacing: CONTROL_DATABASE, command: `dforge restore --control${options.from ? ` --from ${options.from}` : ''} --confirm ${CONTROL_DATABASE}`});
  const now = (options.clock ?? (() => new Date()))();
  let plane = await openControlPlane(dir, {pgTools: options.pgTools});
  let scratch: string | undefined;
  let header: BackupHeader;
  const primary = primaryCluster(plane.config);
  const endpoint = await endpointOf(dir, plane.config, primary.name);
  const password = (await plane.keys.sealed.get(provisionerSecret(primary.name))).toString('utf8');
  const provisioner = {user: PROVISIONER_ROLE, password};
  try {
    const auth = options.from ? await authenticateBackup(plane, await resolveSource(plane, options.from)) : await newestControlBackup(plane);
    header = auth.header;
    if (header.kind !== 'control') throw new UserError(`${auth.source.label} is a tenant backup, not a control backup`, {nextSteps: ['Restore tenants with: dforge restore --tenant <slug> --from <id>']});
    const toc = await decryptAndList(plane, auth);
    if ((toc.counts.get('TABLE') ?? 0) === 0) throw new VerificationError(`${auth.source.label} holds no tables`, {nextSteps: ['Use another control backup.']});

    scratch = `${CONTROL_DATABASE}_restore_${Math.floor(now.getTime() / 1000).toString(36)}`;
    await withConnection(endpoint, {...provisioner, database: 'postgres'}, (c) => c.query(`CREATE DATABASE ${escapeIdentifier(scratch!)} TEMPLATE template0 ENCODING 'UTF8'`));
    crashPoint('restore-control.scratch-created');
    await restoreDump(plane, {auth, cluster: primary.name, credentials: {...provisioner, database: scratch}, args: []});
    crashPoint('restore-control.loaded');
  } catch (err) {
    if (scratch) await withConnection(endpoint, {...provisioner, database: 'postgres'}, (c) => c.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(scratch!)}`)).catch(() => undefined);
    await plane.close();
    throw err;
  }
  await plane.close();

  const previous = `${CONTROL_DATABASE}_pre_restore_${Math.floor(now.getTime() / 1000).toString(36)}`;
  const admin = await connect(endpoint, {...provisioner, database: 'postgres'});
  try {
    await terminateSessions(admin, {databases: [CONTROL_DATABASE]});
    await admin.query('BEGIN');
    await admin.query(`ALTER DATABASE ${escapeIdentifier(CONTROL_DATABASE)} RENAME TO ${escapeIdentifier(previous)}`);
    await admin.query(`ALTER DATABASE ${escapeIdentifier(scratch)} RENAME TO ${escapeIdentifier(CONTROL_DATABASE)}`);
    await admin.query('COMMIT');
    crashPoint('restore-control.swap-committed');
    await admin.query(`ALTER DATABASE ${escapeIdentifier(CONTROL_DATABASE)} SET search_path = dforge`);
    await admin.query(`REVOKE ALL ON DATABASE ${escapeIdentifier(CONTROL_DATABASE)} FROM PUBLIC`);
  } catch (err) {
    await admin.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    await admin.end().catch(() => undefined);
  }

  plane = await openControlPlane(dir);
  try {
    // The anchor still names the lost database's head: the restored log must hold the head the
    // backup's authenticated header recorded, and an entry saying what was restored moves the anchor.
    const restoreEntry = await plane.opsLog.reanchorAfterRestore(plane.control, {backupId: header.backupId, ...(header.opsLogHead ? {backupHead: header.opsLogHead} : {})}, now);
    const catalog = await rebuildCatalog(plane);
    return {backupId: header.backupId, createdAt: header.createdAt, previousDatabase: previous, catalog, tenants: (await plane.tenants.list()).length, opsLogEntry: restoreEntry.seq};
  } finally {
    await plane.close();
  }
}

/**
 * The newest control backup of the primary region, by the creation time in its authenticated
 * header. Every candidate is authenticated: one that fails stops the restore (exit 6) rather than
 * being skipped, because skipping would let whoever can write the destination roll dforge_control
 * (keys, registry) back to an older backup by damaging the newer ones.
 */
async function newestControlBackup(plane: ControlPlane): Promise<AuthenticatedBackup> {
  const candidates: AuthenticatedBackup[] = [];
  for (const destination of regionDestinations(plane, plane.config.primaryRegion)) {
    for (const location of await destination.list(CONTROL_OWNER)) {
      if (!location.endsWith('.dfb')) continue;
      const auth = await authenticateBackup(plane, destinationSource(destination, location));
      if (auth.header.kind !== 'control') {
        throw new VerificationError(`${auth.source.label} is a tenant backup of ${auth.header.tenant} among the control backups`, {
          nextSteps: ['Someone placed it there; move it away, or name a control backup with --from <file>.'],
          data: {reason: 'binding', backupId: auth.header.backupId},
        });
      }
      candidates.push(auth);
    }
  }
  const newest = candidates.sort((a, b) => Date.parse(b.header.createdAt) - Date.parse(a.header.createdAt))[0];
  if (!newest) {
    throw new UserError(`no control backup in the destinations of region ${plane.config.primaryRegion}`, {
      nextSteps: ['Point at one with --from <file>; control backups are under _control/ in a destination.'],
    });
  }
  return newest;
}
