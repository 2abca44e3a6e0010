import {CONTROL_DATABASE, PROVISIONER_ROLE} from '../control/bootstrap.js';
import {endpointOf, openControlPlane, primaryCluster, provisionerSecret} from '../control/plane.js';
import {UserError, VerificationError} from '../errors.js';
import {connect, withConnection} from '../postgres/connect.js';
import {terminateSessions} from '../postgres/sessions.js';
import {escapeIdentifier} from '../postgres/sql.js';
import type {InstallDir} from '../state/install-dir.js';
import {manifestLocation, type BackupManifest} from './catalog.js';
import {openHeader} from './format.js';
import {rebuildCatalog} from './manage.js';
import type {PgToolsMode} from './pg-tool-runner.js';
import {restoreDump} from './restore.js';
import {regionDestinations} from './service.js';
import {checkIntegrity, decryptAndList, readBackupHeader, resolveSource, wrapperFor} from './verify.js';

export interface ControlRestoreResult {
  readonly backupId: string;
  readonly createdAt: string;
  readonly previousDatabase: string;
  /** Catalog entries added back from the destinations' manifests. */
  readonly catalogAdded: number;
  readonly tenants: number;
}

/**
 * Disaster recovery of dforge_control (registry, sealed passwords, data keys, catalog, ops log) on
 * a freshly bootstrapped cluster, from a control backup encrypted under the master key. The newest
 * one in the primary region is used unless `from` names one. The catalog is then completed from the
 * destinations' manifests, so backups newer than the control backup are restorable too.
 */
export async function restoreControl(dir: InstallDir, options: {from?: string; clock?: () => Date; pgTools?: PgToolsMode}): Promise<ControlRestoreResult> {
  const now = (options.clock ?? (() => new Date()))();
  let plane = await openControlPlane(dir, {pgTools: options.pgTools});
  let from = options.from;
  let scratch: string | undefined;
  let header: BackupManifest | undefined;
  const primary = primaryCluster(plane.config);
  const endpoint = await endpointOf(dir, plane.config, primary.name);
  const password = (await plane.keys.sealed.get(provisionerSecret(primary.name))).toString('utf8');
  const provisioner = {user: PROVISIONER_ROLE, password};
  try {
    if (!from) from = await newestControlBackup(plane);
    const source = await resolveSource(plane, from);
    await checkIntegrity(source);
    const parsed = await readBackupHeader(source);
    if (parsed.header.kind !== 'control') throw new UserError(`${source.label} is a tenant backup, not a control backup`, {nextSteps: ['Restore tenants with: dforge restore --tenant <slug> --from <id>']});
    const wrapper = await wrapperFor(plane, parsed, source.label);
    const toc = await decryptAndList(plane, source, parsed, wrapper);
    if ((toc.counts.get('TABLE') ?? 0) === 0) throw new VerificationError(`${source.label} holds no tables`, {nextSteps: ['Use another control backup.']});
    const payloadKey = await openHeader(parsed, wrapper, source.label);
    header = {...parsed.header, format: 'dforge-backup-manifest/1', destination: '', location: '', size: 0, sha256: ''};

    scratch = `${CONTROL_DATABASE}_restore_${Math.floor(now.getTime() / 1000).toString(36)}`;
    await withConnection(endpoint, {...provisioner, database: 'postgres'}, (c) => c.query(`CREATE DATABASE ${escapeIdentifier(scratch!)} TEMPLATE template0 ENCODING 'UTF8'`));
    await restoreDump(plane, {source, parsed, payloadKey, cluster: primary.name, credentials: {...provisioner, database: scratch}, args: []});
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
    const {added} = await rebuildCatalog(plane);
    return {backupId: header.backupId, createdAt: header.createdAt, previousDatabase: previous, catalogAdded: added, tenants: (await plane.tenants.list()).length};
  } finally {
    await plane.close();
  }
}

async function newestControlBackup(plane: Awaited<ReturnType<typeof openControlPlane>>): Promise<string> {
  const candidates: Array<{file: string; createdAt: string}> = [];
  for (const destination of regionDestinations(plane, plane.config.primaryRegion)) {
    for (const location of await destination.list('_control')) {
      if (!location.endsWith('.manifest.json')) continue;
      const m = JSON.parse(await destination.readSmall(location)) as BackupManifest;
      if (manifestLocation(m.location) === location && m.kind === 'control') candidates.push({file: destination.describe(m.location), createdAt: m.createdAt});
    }
  }
  const newest = candidates.sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt))[0];
  if (!newest) {
    throw new UserError(`no control backup in the destinations of region ${plane.config.primaryRegion}`, {
      nextSteps: ['Point at one with --from <file>; control backups are under _control/ in a destination.'],
    });
  }
  return newest.file;
}
