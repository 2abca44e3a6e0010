/**
 * `dforge tenant move`: a tenant's database goes to another cluster (of its region, or, with an
 * approved crossing, of another region) through the journaled steps of src/tenants/move-journal.ts:
 *
 *  plan     the journal row names the target cluster and database before anything exists there;
 *  frozen   the source role is NOLOGIN and its sessions are ended: nothing writes any more;
 *  copied   on the target: the tenant's roles from the same sealed password (NOLOGIN), a database
 *           cloned from the tenant template and shaped, loaded by pg_dump (as the tenant) piped
 *           into pg_restore (as the short-lived restore role), both over verified TLS;
 *  verified per-table row counts and checksums, read as the tenant on both sides, and object counts;
 *  cutover  one control transaction points the registry at the target;
 *  done     the target role may log in again. The source database and roles stay, NOLOGIN, until
 *           --purge-source; so do the tenant's backups in the source region, which the purge
 *           deletes or crypto-shreds (a move across regions rotates the data key before cutover).
 *
 * Every step checks what exists first, so --resume repeats at most the step a crash interrupted.
 * The source must stay readable as the tenant while frozen, so the copy and the checks reach it
 * through a one-run password (see asFrozenTenant): the application's credentials stay locked out.
 */
import type {Writable} from 'node:stream';

import type {Client} from 'pg';

import {clustersOf, endpointOf} from '../control/clusters.js';
import type {ControlPlane} from '../control/plane.js';
import {inTransaction} from '../control/keys-store.js';
import {PartialError, UsageError, UserError, VerificationError} from '../errors.js';
import {BackupCatalog, type BackupRecord} from '../backup/catalog.js';
import {regionDestinations} from '../backup/destination.js';
import {startPgRestoreList, startPgTool, type StartedTool} from '../backup/pg-tool-runner.js';
import {removeBackupFilesFirst} from '../backup/removal.js';
import {pgDumpArgs, restorableEntries} from '../backup/pg-tools.js';
import {restoreRoleOf} from '../postgres/provisioner.js';
import {serverVersionNum, withConnection} from '../postgres/connect.js';
import {randomPassword, scramVerifier} from '../postgres/scram.js';
import {checkRegion, recordCrossing, type CrossRegionApproval} from '../residency/policy.js';
import {publishTenantCatalog} from '../runtime/tenant-catalog.js';
import {crashPoint} from '../state/crash-point.js';
import {previousDatabaseName, scratchDatabaseOf, TenantDatabases} from './databases.js';
import {MODULE_SCHEMAS} from './module-sql.js';
import {MoveJournal, canRollBack, type MoveRecord} from './move-journal.js';
import {pickCluster} from './placement.js';
import type {Tenant} from './registry.js';
import {validateSlug} from './slug.js';
import {fingerprint, type Fingerprint, type TableChecksum} from './table-checksums.js';

export interface MoveResult {
  readonly tenant: string;
  readonly move: MoveRecord;
  /** The per-table checksums both sides agreed on; empty when this run did not verify (a resume past verified, a rollback). */
  readonly checksums: readonly TableChecksum[];
}

const moveCommand = (slug: string, rest: string): string => `dforge tenant move ${slug} ${rest}`;

/**
 * Plans and runs a move. The target is `toCluster` (its region follows) or the cluster of
 * `toRegion` with the most free capacity. A region change needs `approval`, recorded in the ops
 * log before anything happens.
 */
export async function moveTenant(plane: ControlPlane, o: {tenant: string; toCluster?: string; toRegion?: string; approval?: CrossRegionApproval}): Promise<MoveResult> {
  const slug = validateSlug(o.tenant);
  return plane.tenants.withTenantLock(slug, 'tenant.move', async () => {
    const tenant = await plane.tenants.get(slug);
    if (tenant.status !== 'active') throw new UserError(`tenant ${slug} is ${tenant.status}; only an active tenant is moved`, {nextSteps: [`Check it with: dforge tenant show ${slug}`]});
    const journal = new MoveJournal(plane.control);
    const open = await journal.open(slug);
    if (open) {
      throw new UserError(`tenant ${slug} already has an open move (#${open.id}, ${open.fromCluster} -> ${open.toCluster}, state ${open.state}); nothing was changed`, {
        nextSteps: [`Finish it with: ${moveCommand(slug, '--resume')}`, `Or undo it with: ${moveCommand(slug, '--rollback')}`],
        data: {tenant: slug, moveId: open.id, state: open.state},
      });
    }
    const target = await targetOf(plane, tenant, o);
    const rerun = moveCommand(slug, o.toCluster ? `--to-cluster ${o.toCluster}` : `--to-region ${o.toRegion}`);
    const approved = checkRegion(plane.config, {tenant: slug, from: tenant.region, to: target.region, operation: 'move', what: `move of tenant ${slug} to cluster ${target.cluster}`, rerun}, o.approval);
    // The target must not hold the tenant's database already: that is someone's data, not ours to overwrite or drop.
    await onCluster(plane, target.cluster, tenant, async (databases) => {
      const there = (await databases.all()).filter((name) => name === tenant.database || name === scratchDatabaseOf(tenant));
      if (there.length > 0) {
        throw new UserError(`cluster ${target.cluster} already holds database ${there.join(', ')} of tenant ${slug}; nothing was changed`, {
          nextSteps: [`Inspect it on ${target.cluster}; if it is a leftover, drop it there before moving, or move ${slug} to another cluster`],
          data: {tenant: slug, cluster: target.cluster, databases: there},
        });
      }
    });
    if (approved) await recordCrossing(plane, plane.config, approved);
    const move = await journal.plan({
      slug,
      fromRegion: tenant.region,
      fromCluster: tenant.cluster,
      toRegion: target.region,
      toCluster: target.cluster,
      database: tenant.database,
      reason: target.reason,
      approvalReason: approved?.approval.reason,
    });
    return run(plane, journal, tenant, move);
  });
}

/** Continues the tenant's open move from the state its journal row records. */
export async function resumeMove(plane: ControlPlane, slugInput: string): Promise<MoveResult> {
  const slug = validateSlug(slugInput);
  return plane.tenants.withTenantLock(slug, 'tenant.move', async () => {
    const journal = new MoveJournal(plane.control);
    const move = await requireOpen(journal, slug);
    return run(plane, journal, await plane.tenants.get(slug), move);
  });
}

/**
 * Undoes an open move before cutover: drops on the target exactly what the journal names (the
 * tenant's database, the restore scratch database, its roles), lets the source role log in again.
 */
export async function rollbackMove(plane: ControlPlane, slugInput: string): Promise<MoveResult> {
  const slug = validateSlug(slugInput);
  return plane.tenants.withTenantLock(slug, 'tenant.move.rollback', async () => {
    const journal = new MoveJournal(plane.control);
    const move = await requireOpen(journal, slug);
    if (!canRollBack(move.state)) {
      throw new UserError(`move #${move.id} of tenant ${slug} is past cutover (${move.state}): the registry already names ${move.toCluster}; nothing was changed`, {
        nextSteps: [`Finish it with: ${moveCommand(slug, '--resume')}`, `Then, to go back, move it again: ${moveCommand(slug, `--to-cluster ${move.fromCluster}`)}`],
        data: {tenant: slug, moveId: move.id, state: move.state},
      });
    }
    const tenant = await plane.tenants.get(slug);
    await onCluster(plane, move.toCluster, tenant, async (databases) => {
      await databases.drop(scratchDatabaseOf(tenant));
      await databases.drop(move.database);
      await databases.roles.dropRestoreRole(tenant.role);
      await databases.roles.dropRoles(tenant.role);
    });
    await unfreezeSource(plane, tenant, move);
    return {tenant: slug, move: await journal.advance(move, 'rolled-back', {error: 'rolled back by the operator'}), checksums: []};
  });
}

/** The tenant's open move, else its last one. */
export async function moveStatus(plane: ControlPlane, slugInput: string): Promise<MoveRecord | null> {
  return (await new MoveJournal(plane.control).latest(validateSlug(slugInput))) ?? null;
}

/** What --purge-source removed at the source of a finished move. */
export interface PurgeResult {
  readonly tenant: string;
  readonly cluster: string;
  /** Databases dropped on the source cluster. */
  readonly dropped: string[];
  /** Source-region backups deleted (catalog entry, manifest and file). */
  readonly backupsDeleted: string[];
  /** Source-region backups that could not be deleted and are now unreadable: their key versions were destroyed. */
  readonly backupsShredded: string[];
  readonly keyVersionsDestroyed: number[];
  /** Source-region backups neither deleted nor shredded, and why: the purge is partial (exit 4). */
  readonly retained: ReadonlyArray<{readonly id: string; readonly reason: string}>;
  /**
   * Set when key versions were destroyed: control backups taken before the purge still hold them,
   * wrapped under the master key, so the shred is complete only after these commands.
   */
  readonly completeTheShred?: readonly string[];
  readonly move: MoveRecord;
}

/**
 * Removes what a finished move left at its source: the database and roles on the source cluster
 * and, after a move out of a region, the tenant's backups in that region. A backup that can't be
 * deleted (its destination is unreachable or no longer declared) is crypto-shredded instead: the
 * key versions older than the move's pre-cutover rotation are destroyed, unless a backup outside
 * the source region still needs one. `confirm` must repeat the slug. A rerun finishes what a
 * crash interrupted.
 */
export async function purgeSource(plane: ControlPlane, slugInput: string, confirm: string, progress?: (line: string) => void): Promise<PurgeResult> {
  const slug = validateSlug(slugInput);
  if (confirm !== slug) throw new UsageError(`--purge-source drops the source database of ${slug}: --confirm must be exactly ${slug}`, {nextSteps: [`Run: ${moveCommand(slug, `--purge-source --confirm ${slug}`)}`]});
  return plane.tenants.withTenantLock(slug, 'tenant.move.purge-source', async () => {
    const journal = new MoveJournal(plane.control);
    const open = await journal.open(slug);
    if (open) throw new UserError(`tenant ${slug} has an open move (#${open.id}, ${open.state}); nothing was changed`, {nextSteps: [`Finish it with: ${moveCommand(slug, '--resume')}`, `Or undo it with: ${moveCommand(slug, '--rollback')}`]});
    // The newest finished move not purged yet: after two moves, a second run purges the first's source.
    const last = await journal.nextToPurge(slug);
    if (!last) {
      const latest = await journal.latest(slug);
      throw new UserError(latest ? `the source of every finished move of tenant ${slug} is already purged; nothing was changed` : `tenant ${slug} was never moved: there is no source to purge; nothing was changed`, {
        nextSteps: [`See it with: ${moveCommand(slug, '--status')}`],
      });
    }
    const tenant = await plane.tenants.get(slug);
    // A source the tenant lives on again (it moved back) is its live database: nothing of it is dropped.
    const dropped =
      tenant.cluster === last.fromCluster
        ? []
        : await onCluster(plane, last.fromCluster, tenant, async (databases) => {
            const names = await databases.all();
            for (const name of names) await databases.drop(name);
            await databases.roles.dropRestoreRole(tenant.role);
            await databases.roles.dropRoles(tenant.role);
            return names;
          });
    // Backups stay where the tenant lives: in its region, whether it never left it or came back.
    const leftRegion = last.fromRegion !== last.toRegion && last.fromRegion !== tenant.region;
    const backups = leftRegion ? await purgeSourceBackups(plane, last, progress) : {deleted: [], shredded: [], versions: [], retained: []};
    // Purged only once nothing is left at the source: the residency report reads this.
    const move = backups.retained.length === 0 ? await journal.markSourcePurged(last) : last;
    const result: PurgeResult = {
      tenant: slug,
      cluster: last.fromCluster,
      dropped,
      backupsDeleted: backups.deleted,
      backupsShredded: backups.shredded,
      keyVersionsDestroyed: backups.versions,
      retained: backups.retained,
      move,
      ...(backups.shredded.length > 0 ? {completeTheShred: COMPLETE_THE_SHRED} : {}),
    };
    if (result.retained.length > 0) {
      throw new PartialError(`the source of ${slug}'s move was purged except ${result.retained.length} backup(s) in region ${last.fromRegion} that could be neither deleted nor shredded: ${result.retained.map((r) => `${r.id} (${r.reason})`).join('; ')}`, {
        nextSteps: [
          'Delete them by hand from their destination (see dforge backup list), then run this again',
          `Run again: ${moveCommand(slug, `--purge-source --confirm ${slug}`)}`,
          ...(result.completeTheShred ? [`Control backups taken before this purge still hold the destroyed key versions: ${result.completeTheShred.join(', then ')}`] : []),
        ],
        data: {...result},
      });
    }
    return result;
  });
}

/** What makes a shred complete: control backups taken before it hold the destroyed key versions (docs/operations.md). */
const COMPLETE_THE_SHRED = ['dforge keys rotate --master', 'dforge backup --all'];

/**
 * The source-region part of a purge: each of the tenant's backups recorded in the move's source
 * region is deleted; the ones that can't be are shredded through their key version, when that
 * version predates the move's rotation and no backup outside the source region uses it.
 */
async function purgeSourceBackups(plane: ControlPlane, move: MoveRecord, progress?: (line: string) => void): Promise<{deleted: string[]; shredded: string[]; versions: number[]; retained: Array<{id: string; reason: string}>}> {
  const catalog = new BackupCatalog(plane.control);
  const all = await catalog.list({tenant: move.slug, kind: 'tenant'});
  const declared = new Map(regionDestinations(plane, move.fromRegion).map((d) => [d.name, d]));
  const deleted: string[] = [];
  const kept: Array<{record: BackupRecord; why: string}> = [];
  for (const record of all.filter((r) => r.region === move.fromRegion)) {
    const destination = declared.get(record.destination);
    if (!destination) {
      kept.push({record, why: `destination ${record.destination} is no longer declared in region ${move.fromRegion}`});
      continue;
    }
    try {
      await removeBackupFilesFirst(plane, destination, record);
      deleted.push(record.id);
    } catch (err) {
      kept.push({record, why: `deleting it from ${record.destination} failed: ${(err as Error).message}`});
    }
  }
  for (const k of kept) progress?.(`backup ${k.record.id}: ${k.why}; destroying its key version instead`);
  const usedElsewhere = new Set(all.filter((r) => r.region !== move.fromRegion).map((r) => r.keyVersion));
  const shreddable = (r: BackupRecord): boolean => move.keyRotatedTo !== null && r.keyVersion < move.keyRotatedTo && !usedElsewhere.has(r.keyVersion);
  const versions = [...new Set(kept.filter((k) => shreddable(k.record)).map((k) => k.record.keyVersion))];
  const destroyed = versions.length > 0 ? await plane.dataKeys.destroyVersions(move.slug, versions) : [];
  // A version gone from the store opens nothing, whether this run destroyed it or a run a crash cut short did.
  const remaining = new Set(await plane.dataKeys.versions(move.slug));
  const shredded: string[] = [];
  for (const k of kept.filter((x) => !remaining.has(x.record.keyVersion))) {
    // A shredded backup's catalog entry would only point at ciphertext nobody can open.
    await catalog.remove(k.record.id);
    shredded.push(k.record.id);
  }
  const why = (v: number): string =>
    usedElsewhere.has(v) ? 'also opens a backup outside the region' : move.keyRotatedTo === null ? 'stays: the move recorded no key rotation to separate the regions' : 'was made after the move rotated the key';
  const retained = kept.filter((k) => remaining.has(k.record.keyVersion)).map((k) => ({id: k.record.id, reason: `${k.why}; its key version v${k.record.keyVersion} ${why(k.record.keyVersion)}`}));
  return {deleted, shredded, versions: destroyed, retained};
}

async function requireOpen(journal: MoveJournal, slug: string): Promise<MoveRecord> {
  const move = await journal.open(slug);
  if (move) return move;
  const last = await journal.latest(slug);
  throw new UserError(`tenant ${slug} has no open move${last ? ` (the last one, #${last.id}, is ${last.state})` : ''}; nothing was changed`, {
    nextSteps: [`Start one with: ${moveCommand(slug, '--to-cluster <cluster>')}`],
  });
}

/** Where --to-cluster or --to-region sends the tenant, and why, in words. */
async function targetOf(plane: ControlPlane, tenant: Tenant, o: {toCluster?: string; toRegion?: string}): Promise<{region: string; cluster: string; reason: string}> {
  const clusters = clustersOf(plane.config);
  if (o.toCluster !== undefined) {
    const entry = clusters.get(o.toCluster);
    if (!entry) throw new UsageError(`no cluster ${o.toCluster}`, {nextSteps: [`Declared clusters: ${[...clusters.keys()].join(', ')}`]});
    if (o.toRegion !== undefined && o.toRegion !== entry.region) throw new UsageError(`cluster ${o.toCluster} is in region ${entry.region}, not ${o.toRegion}`, {nextSteps: ['Give --to-cluster alone: its region follows']});
    if (o.toCluster === tenant.cluster) throw new UsageError(`tenant ${tenant.slug} already lives on ${o.toCluster}`, {nextSteps: [`See it with: dforge tenant show ${tenant.slug}`]});
    return {region: entry.region, cluster: o.toCluster, reason: 'requested with --to-cluster'};
  }
  const region = o.toRegion!;
  const def = plane.config.regions[region];
  if (!def) throw new UsageError(`no region ${region}`, {nextSteps: [`Declared regions: ${Object.keys(plane.config.regions).join(', ')}`]});
  const candidates = def.clusters.map((c) => c.name).filter((name) => name !== tenant.cluster);
  const counts = await plane.control.query<{cluster: string; n: string}>('SELECT cluster, count(*) AS n FROM tenants WHERE cluster = ANY($1) GROUP BY cluster', [candidates]);
  const used = new Map(counts.rows.map((r) => [r.cluster, Number(r.n)]));
  const loads = candidates.map((name) => ({name, used: used.get(name) ?? 0, capacity: def.clusters.find((c) => c.name === name)!.maxTenants ?? null}));
  const chosen = pickCluster(loads);
  if (!chosen) {
    throw new UserError(`region ${region} has no cluster with room for tenant ${tenant.slug} (other than its own)`, {
      nextSteps: ['Raise maxTenants of a cluster of the region in dforge.yaml, or add a cluster', `Or name one: ${moveCommand(tenant.slug, '--to-cluster <cluster>')}`],
    });
  }
  return {region, cluster: chosen.name, reason: `most free capacity in region ${region} (${chosen.used}/${chosen.capacity ?? 'unlimited'} used)`};
}

/** Runs the move's remaining steps from its journal state. */
async function run(plane: ControlPlane, journal: MoveJournal, tenant: Tenant, start: MoveRecord): Promise<MoveResult> {
  let move = start;
  let checksums: TableChecksum[] = [];
  try {
    if (move.state === 'planned') {
      await onCluster(plane, move.fromCluster, tenant, async (databases) => {
        await databases.roles.setLogin(tenant.role, false);
        await databases.roles.terminateSessions(tenant.role);
      });
      move = await journal.advance(move, 'frozen');
    }
    // Every run before cutover (a resume too) tells the app the tenant is read-only until the move
    // ends: its connections are refused until then. Republishing an unchanged catalog changes nothing.
    if (canRollBack(move.state)) await publishTenantCatalog(plane, [tenant.slug]);
    // The source's fingerprint, when this run read it during the copy; a resume reads it again.
    let source: Fingerprint | undefined;
    if (move.state === 'frozen') {
      source = await copy(plane, tenant, move);
      move = await journal.advance(move, 'copied');
    }
    if (move.state === 'copied') {
      checksums = await verify(plane, tenant, move, source);
      move = await journal.advance(move, 'verified');
    }
    if (move.state === 'verified') {
      // Across regions, the tenant's data key is rotated first: every backup made in the new
      // region uses the new version, so --purge-source can later destroy the versions that only
      // old-region backups use. A crash before the journal records it rotates once more: harmless.
      if (move.fromRegion !== move.toRegion && move.keyRotatedTo === null) move = await journal.recordKeyRotation(move, (await plane.dataKeys.rotate(tenant.slug)).version);
      const verified = move;
      move = await inTransaction(plane.control, async () => {
        await plane.control.query('UPDATE tenants SET region = $2, cluster = $3, updated_at = now() WHERE slug = $1', [tenant.slug, verified.toRegion, verified.toCluster]);
        return journal.advance(verified, 'cutover', {c: plane.control});
      });
      crashPoint('tenant.move.cutover');
    }
    if (move.state === 'cutover') {
      await onCluster(plane, move.toCluster, tenant, (databases) => databases.roles.setLogin(tenant.role, true));
      move = await journal.advance(move, 'done');
    }
  } catch (err) {
    await journal.noteError(move, err instanceof Error ? err.message : String(err)).catch(() => undefined);
    throw err;
  }
  return {tenant: tenant.slug, move, checksums};
}

/**
 * The target side of the copy, from scratch each time (a rerun after a crash drops what an earlier
 * attempt left: the journal names it, and plan refused a target that held the tenant's database).
 * As restore does (src/backup/restore.ts restoreInto): a scratch database shaped by the owner role,
 * loaded by the restore role (a NOINHERIT member of the tenant's login role and of nothing else) so
 * code in the dump runs with the tenant's power only, then renamed to the tenant's database.
 */
async function copy(plane: ControlPlane, tenant: Tenant, move: MoveRecord): Promise<Fingerprint> {
  const password = await plane.tenants.password(tenant.slug);
  return onCluster(plane, move.toCluster, tenant, async (databases) => {
    const scratch = scratchDatabaseOf(tenant);
    await databases.drop(scratch);
    await databases.drop(move.database);
    await databases.roles.dropRestoreRole(tenant.role);
    await databases.roles.ensure(tenant.role, scramVerifier(password), tenant.connectionLimit, false);
    crashPoint('tenant.move.copy.target-roles');
    await databases.clone(scratch);
    const restorePassword = randomPassword();
    await databases.roles.createRestoreRole(tenant.role, scramVerifier(restorePassword));
    await databases.shape(scratch, {connect: [restoreRoleOf(tenant.role)]});
    const fingerprinted = await asFrozenTenant(plane, tenant, move.fromCluster, async (source) => {
      const serverMajor = Math.floor(Number(await withEndpoint(plane, move.fromCluster, source, serverVersionNum)) / 10_000);
      // The source is frozen, so its fingerprint is read while the copy runs instead of after it.
      // Both settle before the frozen source's one-run password is taken back (asFrozenTenant's finally).
      const [piped, summed] = await Promise.allSettled([
        pipeDump(plane, {from: move.fromCluster, source, to: move.toCluster, target: {user: restoreRoleOf(tenant.role), password: restorePassword, database: scratch}, role: tenant.role, serverMajor}),
        withEndpoint(plane, move.fromCluster, source, (c) => fingerprint(c, {alongside: true})),
      ]);
      if (piped.status === 'rejected') throw piped.reason;
      if (summed.status === 'rejected') throw summed.reason;
      const sums = summed.value;
      crashPoint('tenant.move.copy.loaded');
      return sums;
    });
    await databases.shape(scratch, {connect: [tenant.role], revoke: [restoreRoleOf(tenant.role)]});
    await databases.roles.dropRestoreRole(tenant.role);
    // Nothing lives under the tenant's name on the target (dropped above), so nothing is kept aside.
    await databases.roles.swap(tenant.role, previousDatabaseName(tenant, new Date()));
    crashPoint('tenant.move.copy.renamed');
    return fingerprinted;
  });
}

/**
 * The copy: one pg_dump (as the tenant) into pg_restore (as the restore role), both over verified
 * TLS. pg_restore must be given its entry filter (restorableEntries) before it reads the dump, and
 * a pure pipe cannot filter; but a custom-format archive starts with its table of contents, so
 * that head of the stream is first shown to `pg_restore --list`, kept, and then handed on to the
 * filtered restore ahead of the rest. One pg_dump thus serves both, instead of a second dump
 * started only to read the list.
 */
async function pipeDump(
  plane: ControlPlane,
  o: {from: string; source: {user: string; password: string; database: string}; to: string; target: {user: string; password: string; database: string}; role: string; serverMajor: number},
): Promise<void> {
  // No output buffer: the archive goes straight on to pg_restore (see PgToolRequest.bufferOutput).
  const pgDump = await startPgTool(plane, {tool: 'pg_dump', args: pgDumpArgs('tenant'), cluster: o.from, credentials: o.source, serverMajor: o.serverMajor, bufferOutput: false});
  let pgRestore: StartedTool | undefined;
  // Kept for the error: a pg_dump that fails at once (a refused login) shows the list tool only an
  // empty archive, and what pg_dump said is what the operator needs to see.
  const dumped = pgDump.done.then(
    () => undefined,
    (err: unknown) => {
      pgRestore?.kill();
      return err;
    },
  );
  try {
    pgDump.stdin.end();
    const {list, handOn} = await readTableOfContents(plane, pgDump, o.serverMajor);
    pgRestore = await startPgTool(plane, {
      tool: 'pg_restore',
      args: ['--dbname', o.target.database, `--role=${o.role}`, '--no-owner', '--no-privileges', '--exit-on-error'],
      cluster: o.to,
      credentials: o.target,
      serverMajor: o.serverMajor,
      useList: restorableEntries(list, MODULE_SCHEMAS),
    });
    handOn(pgRestore.stdin);
    // Either failing stops the other: a half-loaded scratch database is dropped by the rerun.
    pgRestore.done.catch(() => pgDump.kill());
    await Promise.all([pgDump.done, pgRestore.done]);
  } catch (err) {
    if (pgRestore) throw err;
    // The head could not be read: pg_dump's own failure explains it when pg_dump has ended by now.
    const dumpFailure = await Promise.race([dumped, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 1000).unref())]);
    throw dumpFailure ?? err;
  } finally {
    // After a failure neither outlives the move: a pg_restore left on a cut stream would hold the
    // scratch database the rerun drops. Both have exited when the copy succeeded.
    pgDump.kill();
    pgRestore?.kill();
    await Promise.allSettled([pgDump.done, pgRestore?.done]);
    await Promise.all([pgDump.close(), pgRestore?.close()]);
  }
}

/**
 * The archive's table of contents, read by `pg_restore --list` from the head of pg_dump's output,
 * and `handOn`, which sends everything read so far and then the rest to the restore. Until then
 * every chunk is kept, with pg_dump held back while the list tool is behind and once it is done
 * (so little more than the contents is kept). The output never goes without a reader: Node resumes
 * a child's paused stdout when the child exits, and with no reader those bytes would be lost.
 */
async function readTableOfContents(plane: ControlPlane, pgDump: StartedTool, serverMajor: number): Promise<{list: string; handOn: (to: Writable) => void}> {
  const lister = await startPgRestoreList(plane, serverMajor);
  const kept: Buffer[] = [];
  const listed: Buffer[] = [];
  lister.stdout.on('data', (b: Buffer) => listed.push(b));
  // It exits, closing its stdin, once it has the contents: writes after that are not errors.
  lister.stdin.on('error', () => undefined);
  let listing = true;
  const resume = () => {
    if (listing) pgDump.stdout.resume();
  };
  const keep = (chunk: Buffer) => {
    kept.push(chunk);
    if (listing && !lister.stdin.write(chunk)) {
      pgDump.stdout.pause();
      lister.stdin.once('drain', resume);
    }
  };
  const endList = () => lister.stdin.end();
  pgDump.stdout.on('data', keep);
  pgDump.stdout.once('end', endList);
  try {
    await lister.done;
  } finally {
    listing = false;
    pgDump.stdout.pause();
    pgDump.stdout.off('end', endList);
    lister.stdin.destroy();
    await lister.close();
  }
  return {
    list: Buffer.concat(listed).toString('utf8'),
    handOn: (to) => {
      pgDump.stdout.off('data', keep);
      for (const chunk of kept) to.write(chunk);
      pgDump.stdout.pipe(to);
    },
  };
}

/**
 * Compares the fingerprints (src/tenants/table-checksums.ts) of the source and the copy, each read
 * as the tenant; a difference stops the move before cutover, naming the tables.
 */
async function verify(plane: ControlPlane, tenant: Tenant, move: MoveRecord, known?: Fingerprint): Promise<TableChecksum[]> {
  // Each side is one scan of every table; both at once when the copy did not already read the source.
  const read = (cluster: string) => asFrozenTenant(plane, tenant, cluster, (credentials) => withEndpoint(plane, cluster, credentials, (c) => fingerprint(c)));
  const [source, target] = await Promise.all([known ?? read(move.fromCluster), read(move.toCluster)]);
  const a = JSON.stringify(source);
  const b = JSON.stringify(target);
  if (a !== b) {
    const differing = source.tables.filter((t) => JSON.stringify(t) !== JSON.stringify(target.tables.find((u) => u.table === t.table))).map((t) => t.table);
    throw new VerificationError(`the copy of tenant ${tenant.slug} on ${move.toCluster} differs from its source on ${move.fromCluster}${differing.length ? ` (tables: ${differing.join(', ')})` : ' (object counts)'}; the registry still names ${move.fromCluster}`, {
      nextSteps: [`Copy again with: ${moveCommand(tenant.slug, '--resume')}`, `Or undo the move with: ${moveCommand(tenant.slug, '--rollback')}`],
      data: {tenant: tenant.slug, source, target},
    });
  }
  return source.tables;
}

/**
 * Runs `fn` with credentials of the tenant's own role on `cluster` while the move keeps it frozen:
 * the role logs in for this run with a one-run password, so the application (which holds the
 * sealed one) stays out; afterwards the sealed password is back and the role NOLOGIN again. A
 * crash in between leaves the role LOGIN under a password nobody holds; the rerun or rollback
 * sets both again.
 */
async function asFrozenTenant<T>(plane: ControlPlane, tenant: Tenant, cluster: string, fn: (credentials: {user: string; password: string; database: string}) => Promise<T>): Promise<T> {
  const once = randomPassword();
  const sealed = await plane.tenants.password(tenant.slug);
  await onCluster(plane, cluster, tenant, async (databases) => {
    await databases.roles.setPassword(tenant.role, scramVerifier(once));
    await databases.roles.setLogin(tenant.role, true);
  });
  try {
    return await fn({user: tenant.role, password: once, database: tenant.database});
  } finally {
    await onCluster(plane, cluster, tenant, async (databases) => {
      await databases.roles.setLogin(tenant.role, false);
      await databases.roles.terminateSessions(tenant.role);
      await databases.roles.setPassword(tenant.role, scramVerifier(sealed));
    });
  }
}

/** Rollback: the source role gets its sealed password back and may log in; the tenant is live there again. */
async function unfreezeSource(plane: ControlPlane, tenant: Tenant, move: MoveRecord): Promise<void> {
  const sealed = await plane.tenants.password(tenant.slug);
  await onCluster(plane, move.fromCluster, tenant, async (databases) => {
    await databases.roles.setPassword(tenant.role, scramVerifier(sealed));
    await databases.roles.setLogin(tenant.role, true);
  });
}

async function withEndpoint<T>(plane: ControlPlane, cluster: string, credentials: {user: string; password: string; database: string}, fn: (c: Client) => Promise<T>): Promise<T> {
  return withConnection(await endpointOf(plane.keys.dir, plane.config, cluster), credentials, fn);
}

/** The tenant's databases and roles on `cluster`, through a provisioner session there. */
async function onCluster<T>(plane: ControlPlane, cluster: string, tenant: Tenant, fn: (databases: TenantDatabases) => Promise<T>): Promise<T> {
  const c = await plane.provisionerOn(cluster);
  try {
    return await fn(new TenantDatabases(c, tenant, (database) => plane.provisionerOn(cluster, database)));
  } finally {
    await c.end().catch(() => undefined);
  }
}
