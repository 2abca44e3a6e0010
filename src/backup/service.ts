import {randomBytes} from 'node:crypto';
import {promises as fs} from 'node:fs';
import path from 'node:path';
import {pipeline} from 'node:stream';

import {opsLogHead as currentOpsLogHead, type OpsLogHead} from '../audit/ops-log.js';
import {recordOps} from '../audit/record.js';
import {checkRegion, recordCrossing, type CrossRegionApproval} from '../residency/policy.js';
import type {Tenant} from '../tenants/registry.js';
import {CONTROL_DATABASE, PROVISIONER_ROLE} from '../control/bootstrap.js';
import {endpointOf, primaryCluster, provisionerSecret} from '../control/clusters.js';
import type {ControlPlane} from '../control/plane.js';
import {LockedError, PartialError, UserError} from '../errors.js';
import {crashPoint} from '../state/crash-point.js';
import {serverVersionNum, withConnection} from '../postgres/connect.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {withBackupLock, WHOLE_RUN, type BackupLockHolder} from './backup-lock.js';
import {BackupCatalog, backupLocation, manifestLocation, type BackupManifest, type BackupRecord} from './catalog.js';
import type {BackupDestination} from './backup-destination.js';
import {destinationFor, destinationsOf, regionDestinations} from './destination.js';
import {CHUNK_SIZE, CONTROL_OWNER, createHeader, dataKeyWrapper, EncryptStream, type FileKeyWrapper} from './format.js';
import {startPgTool} from './pg-tool-runner.js';
import {pgDumpArgs} from './pg-tools.js';
import {releaseRetiredKeys, type KeyRelease} from './removal.js';

/**
 * Under a tenant's backup lock no other run writes that tenant's files, so every *.partial there
 * is a killed run's leftover and can go at once, whatever its age.
 */
const STALE_PARTIAL_MS = 0;

export interface BackupOutcome {
  readonly tenant: string;
  /** locked: another run (e.g. backup --tenant) is backing it up right now; skipped, not failed. */
  readonly status: 'ok' | 'failed' | 'locked';
  readonly backupId?: string;
  readonly bytes?: number;
  readonly seconds: number;
  readonly error?: string;
  /** With status locked: who holds the tenant's backup lock. */
  readonly holder?: BackupLockHolder;
}

/**
 * The destination for a tenant's backup: its region's first, or the one named. A destination of
 * another region is a region crossing (operation 'backup'): refused without the operator's
 * approval (checkRegion throws, naming tenant, both regions and --allow-cross-region); with it,
 * the crossing to record before the dump starts is returned alongside.
 */
export function destinationForTenant(
  plane: ControlPlane,
  tenant: {slug: string; region: string},
  requested?: string,
  approval?: CrossRegionApproval,
): {destination: BackupDestination; crossing?: ApprovedCrossing} {
  if (requested) {
    const declared = destinationsOf(plane.config).get(requested);
    if (declared === undefined) {
      const own = regionDestinations(plane, tenant.region);
      throw new UserError(`no backup destination ${requested} in dforge.yaml`, {
        nextSteps: [`Use a destination of region ${tenant.region}: ${own.map((d) => d.name).join(', ') || '(none declared)'}`],
      });
    }
    // Undefined for a destination of the tenant's own region: nothing crosses.
    const crossing = checkRegion(
      plane.config,
      {tenant: tenant.slug, from: tenant.region, to: declared.region, operation: 'backup', what: `backup to destination ${requested}`, rerun: `dforge backup --tenant ${tenant.slug} --destination ${requested}`},
      approval,
    );
    return {destination: destinationFor(declared.region, declared.config, plane.keys.sealed), ...(crossing ? {crossing} : {})};
  }
  const own = regionDestinations(plane, tenant.region);
  if (own.length === 0) {
    throw new UserError(`region ${tenant.region} has no backup destination`, {nextSteps: [`Declare one under regions.${tenant.region}.backup.destinations in dforge.yaml.`]});
  }
  return {destination: own[0]!};
}

/** An approved crossing, to record before the data moves. */
type ApprovedCrossing = NonNullable<ReturnType<typeof checkRegion>>;

const timestampId = (now: Date): string => now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');

/**
 * Streams `pg_dump -Fc`, run as `user`, through the backup encryption into the destination, then
 * writes the manifest and records the catalog entry. Memory stays bounded (a few chunks); the
 * file becomes visible only once pg_dump has succeeded and the bytes are on disk.
 */
async function dumpEncrypted(options: {
  plane: ControlPlane;
  destination: BackupDestination;
  wrapper: FileKeyWrapper;
  kind: 'tenant' | 'control';
  tenant: string;
  region: string;
  cluster: string;
  credentials: {user: string; password: string; database: string};
  now: Date;
  opsLogHead?: OpsLogHead;
}): Promise<BackupRecord> {
  const {plane, destination} = options;
  const endpoint = await endpointOf(plane.keys.dir, plane.config, options.cluster);
  // The control session already talks to the primary cluster; another cluster costs one connection.
  const serverVersion = options.cluster === primaryCluster(plane.config).name ? await serverVersionNum(plane.control) : await withConnection(endpoint, options.credentials, serverVersionNum);
  const backupId = `${timestampId(options.now)}-${options.tenant}-${randomBytes(3).toString('hex')}`;
  const location = backupLocation({kind: options.kind, tenant: options.tenant, backupId});
  const described = {
    kind: options.kind,
    backupId,
    tenant: options.tenant,
    region: options.region,
    cluster: options.cluster,
    pgVersion: serverVersion,
    createdAt: options.now.toISOString(),
    ...(options.opsLogHead ? {opsLogHead: options.opsLogHead} : {}),
  };
  const header = await createHeader(described, options.wrapper);
  const pgDump = await startPgTool(plane, {tool: 'pg_dump', args: pgDumpArgs(options.kind), cluster: options.cluster, credentials: options.credentials, serverMajor: Math.floor(Number(serverVersion) / 10_000)});
  try {
    pgDump.stdin.end();
    // Awaited by the encoder before the final chunk; marked handled now, in case the tool fails before the stream reaches it.
    pgDump.done.catch(() => undefined);
    const encoder = new EncryptStream(header, pgDump.done);
    // pipeline() tears the whole chain down when any part fails, the destination included.
    const {size} = await destination.put(location, pipeline(pgDump.stdout, encoder, () => undefined));
    const {sha256} = encoder.digest();
    const manifest: BackupManifest = {
      format: 'dforge-backup-manifest/1',
      ...described,
      keyId: options.wrapper.keyId,
      keyVersion: options.wrapper.keyVersion,
      chunkSize: CHUNK_SIZE,
      destination: destination.name,
      location,
      size,
      sha256,
    };
    await destination.putSmall(manifestLocation(location), `${JSON.stringify(manifest, null, 2)}\n`);
    crashPoint('backup.manifest-written');
    const record: BackupRecord = {
      id: backupId,
      kind: options.kind,
      tenant: options.tenant,
      region: options.region,
      cluster: options.cluster,
      destination: destination.name,
      location,
      size,
      sha256: manifest.sha256,
      pgVersion: serverVersion,
      keyId: manifest.keyId,
      keyVersion: manifest.keyVersion,
      createdAt: manifest.createdAt,
      verifiedAt: null,
    };
    await new BackupCatalog(plane.control).add(record);
    crashPoint('backup.cataloged');
    return record;
  } catch (err) {
    // A failed write (a full disk) must not leave pg_dump blocked on a pipe nobody reads, holding its locks.
    pgDump.kill();
    throw err;
  } finally {
    await pgDump.close();
  }
}

export function lastSuccessFile(dir: InstallDir, tenant: string): string {
  return path.join(dir.root, 'state', 'backups', `${tenant}.last-success.json`);
}

export interface TenantBackupState {
  readonly tenant: string;
  readonly lastSuccess: string | null;
  /** Hours since the last successful backup; null if there never was one. */
  readonly staleHours: number | null;
}

/** A tenant's last successful backup, from its marker, and how many hours ago it was. */
export async function lastBackupState(dir: InstallDir, tenant: string, now: Date): Promise<TenantBackupState> {
  const marker = await fs.readFile(lastSuccessFile(dir, tenant), 'utf8').then((t) => JSON.parse(t) as {at: string}, () => undefined);
  return {tenant, lastSuccess: marker?.at ?? null, staleHours: marker ? Math.round((now.getTime() - Date.parse(marker.at)) / 36e5) : null};
}

/** `backup --tenant`: one tenant's backup, with its outcome in the ops log. */
export async function backupTenant(plane: ControlPlane, slug: string, options: {destination?: string; approval?: CrossRegionApproval; clock?: () => Date} = {}): Promise<BackupRecord> {
  const started = Date.now();
  // A refused crossing is decided before the try: it is a refusal that changed nothing, not a failed backup.
  const target = await backupTarget(plane, slug, options.destination, options.approval);
  try {
    const record = await takeTenantBackup(plane, target, options);
    await recordBackupOutcome(plane, {tenant: slug, status: 'ok', backupId: record.id, bytes: record.size, seconds: (Date.now() - started) / 1000}, options.clock);
    return record;
  } catch (err) {
    // A locked tenant is being backed up by the run that holds the lock; that run records it.
    if (!(err instanceof LockedError)) {
      await recordBackupOutcome(plane, {tenant: slug, status: 'failed', seconds: (Date.now() - started) / 1000, error: err instanceof Error ? err.message : String(err)}, options.clock).catch(() => undefined);
    }
    throw err;
  }
}

/**
 * Writes a backup outcome to the ops log, as an auditor reads it: the backup taken, or the failure,
 * plus a `backup.stale` entry when the failure leaves the tenant without a backup younger than
 * policy.backups.warnAfterHours. Locked outcomes are not written: the holder's run records that tenant.
 */
async function recordBackupOutcome(plane: ControlPlane, outcome: BackupOutcome, clock?: () => Date): Promise<void> {
  const target = `tenant:${outcome.tenant}`;
  if (outcome.status === 'ok') {
    await recordOps(plane, {action: 'backup.run', target, outcome: 'ok', details: {backupId: outcome.backupId, bytes: outcome.bytes}});
    return;
  }
  if (outcome.status !== 'failed') return;
  await recordOps(plane, {action: 'backup.run', target, outcome: 'failed', details: {error: outcome.error}});
  const {lastSuccess, staleHours} = await lastBackupState(plane.keys.dir, outcome.tenant, (clock ?? (() => new Date()))());
  // The same threshold posture WARNs at (policy.backups.warnAfterHours in dforge.yaml).
  if (staleHours === null || staleHours >= plane.config.policy.backups.warnAfterHours) {
    await recordOps(plane, {action: 'backup.stale', target, outcome: 'failed', details: {lastSuccess, staleHours}});
  }
}

/** The tenant and the destination its backup goes to, every refusal decided before any lock is taken or byte written. */
interface BackupTarget {
  readonly tenant: Tenant;
  readonly destination: BackupDestination;
  readonly crossing?: ApprovedCrossing;
}

async function backupTarget(plane: ControlPlane, slug: string, requested?: string, approval?: CrossRegionApproval): Promise<BackupTarget> {
  const tenant = await plane.tenants.get(slug);
  if (tenant.status !== 'active' && tenant.status !== 'suspended') {
    throw new UserError(`tenant ${slug} is ${tenant.status} and cannot be backed up`, {nextSteps: [`Finish the interrupted operation first (dforge tenant show ${slug}).`]});
  }
  return {tenant, ...destinationForTenant(plane, tenant, requested, approval)};
}

async function takeTenantBackup(plane: ControlPlane, target: BackupTarget, options: {clock?: () => Date; command?: string} = {}): Promise<BackupRecord> {
  const now = (options.clock ?? (() => new Date()))();
  const {tenant, destination} = target;
  const slug = tenant.slug;
  return withBackupLock(plane, slug, options.command ?? `backup --tenant ${slug}`, async () => {
    // Under the lock (a locked run takes nothing) and before the dump: no crossing happens unrecorded.
    // Recorded at the backup's own time, which is what the residency report matches the approval by.
    if (target.crossing) await recordCrossing(plane, plane.config, target.crossing, now);
    // Encryption fails closed: no data key, no file.
    const dek = await plane.dataKeys.current(slug);
    // With the separator: an S3 prefix `acme` would also match `acme-corp/`, whose upload may be running.
    await destination.removeIncomplete(`${slug}/`, STALE_PARTIAL_MS);
    const record = await dumpEncrypted({
      plane,
      destination,
      wrapper: dataKeyWrapper(dek),
      kind: 'tenant',
      tenant: slug,
      // Where the file lives, as for control backups: an approved cross-region backup is of the
      // destination's region, so restore, verify and prune find it there and its place binds.
      region: destination.region,
      cluster: tenant.cluster,
      credentials: {user: tenant.role, password: await plane.tenants.password(slug), database: tenant.database},
      now,
    });
    await fs.mkdir(path.dirname(lastSuccessFile(plane.keys.dir, slug)), {recursive: true, mode: 0o755});
    await writeFileAtomic(lastSuccessFile(plane.keys.dir, slug), `${JSON.stringify({tenant: slug, backupId: record.id, at: record.createdAt, size: record.size})}\n`, {mode: 0o644});
    crashPoint('backup.last-success-marked');
    return record;
  });
}

/**
 * dforge_control itself, encrypted under the master key, to every region's first destination:
 * losing the control database must not make every tenant backup unreadable. No region check: it
 * holds only global data (names, region pins, wrapped keys, the catalog, the ops log), no tenant's.
 */
export async function backupControl(plane: ControlPlane, options: {clock?: () => Date; command?: string} = {}): Promise<BackupRecord[]> {
  const now = (options.clock ?? (() => new Date()))();
  const command = options.command ?? 'backup --all';
  const primary = primaryCluster(plane.config);
  const keyring = plane.keys.keyring;
  const password = (await plane.keys.sealed.get(provisionerSecret(primary.name))).toString('utf8');
  const records: BackupRecord[] = [];
  await withBackupLock(plane, CONTROL_OWNER, command, () =>
    // The file key is wrapped under the master key, and the file is in the catalog before the
    // shared keys lock is let go: a rotation then sees it, and keeps its version decrypt-only.
    keyring.withWrites(`dforge ${command} (dforge_control)`, async () => {
      const wrapper: FileKeyWrapper = {keyId: keyring.keyId, keyVersion: keyring.writeVersion(), wrap: (k, c) => keyring.wrap(k, c), unwrap: (w, c, what) => keyring.unwrap(w, c, what)};
      // Read before pg_dump takes its snapshot, so the dump holds this head (and maybe more).
      const opsLogHead = await currentOpsLogHead(plane.control);
      for (const region of Object.keys(plane.config.regions)) {
        const destination = regionDestinations(plane, region)[0];
        if (!destination) continue;
        await destination.removeIncomplete(`${CONTROL_OWNER}/`, STALE_PARTIAL_MS);
        records.push(
          await dumpEncrypted({
            plane,
            destination,
            wrapper,
            kind: 'control',
            tenant: CONTROL_OWNER,
            region,
            cluster: primary.name,
            credentials: {user: PROVISIONER_ROLE, password, database: CONTROL_DATABASE},
            now,
            ...(opsLogHead ? {opsLogHead} : {}),
          }),
        );
      }
    }),
  );
  return records;
}

export interface BackupAllResult {
  readonly tenants: BackupOutcome[];
  readonly control: BackupRecord[];
  /** Set when dforge_control was not backed up because another run held its lock. */
  readonly controlLocked?: string;
  /** Retired master versions released after the control backup. */
  readonly keys?: KeyRelease;
}

/**
 * Every active or suspended tenant, `concurrency` at a time, then dforge_control; one failure never
 * stops the others. Each outcome is reported as it happens (one JSON line per tenant, for cron mail).
 *
 * The whole run holds a lock of its own, so an overlapping `backup --all` exits 5 at once, naming
 * the holder, instead of racing this one tenant by tenant (which gave duplicates or spurious
 * failures). A tenant locked by a concurrent `backup --tenant` is being backed up by that run: it
 * is reported as locked and skipped, not failed. Failed tenants make the run a PartialError (exit
 * 4) that names them; a run that found every tenant locked and backed up nothing exits 5.
 */
export async function backupAll(plane: ControlPlane, options: {concurrency: number; clock?: () => Date; report: (outcome: BackupOutcome) => void}): Promise<BackupAllResult> {
  return withBackupLock(plane, WHOLE_RUN, 'backup --all', async () => {
    const {default: pLimit} = await import('p-limit');
    const limit = pLimit(options.concurrency);
    const tenants = (await plane.tenants.list()).filter((t) => t.status === 'active' || t.status === 'suspended');
    const outcomes = await Promise.all(
      tenants.map((t) =>
        limit(async (): Promise<BackupOutcome> => {
          const started = Date.now();
          let outcome: BackupOutcome;
          try {
            const record = await takeTenantBackup(plane, await backupTarget(plane, t.slug), {clock: options.clock, command: 'backup --all'});
            outcome = {tenant: t.slug, status: 'ok', backupId: record.id, bytes: record.size, seconds: (Date.now() - started) / 1000};
          } catch (err) {
            const seconds = (Date.now() - started) / 1000;
            const error = err instanceof Error ? err.message : String(err);
            outcome =
              err instanceof LockedError
                ? {tenant: t.slug, status: 'locked', seconds, error, ...(err.data.holder ? {holder: err.data.holder as BackupLockHolder} : {})}
                : {tenant: t.slug, status: 'failed', seconds, error};
          }
          options.report(outcome);
          return outcome;
        }),
      ),
    );
    // Recorded once every tenant is done: the ops log appends on the control session the tenants' backups share.
    for (const outcome of outcomes) await recordBackupOutcome(plane, outcome, options.clock);
    let control: BackupRecord[] = [];
    let controlLocked: string | undefined;
    let keys: KeyRelease | undefined;
    try {
      control = await backupControl(plane, {clock: options.clock});
      await recordOps(plane, {action: 'backup.run', target: 'control', outcome: 'ok', details: {backupIds: control.map((c) => c.id)}});
      // A fresh control backup under the active master version may free retired ones.
      keys = await releaseRetiredKeys(plane, 'backup --all');
    } catch (err) {
      if (!(err instanceof LockedError)) {
        await recordOps(plane, {action: 'backup.run', target: 'control', outcome: 'failed', details: {error: err instanceof Error ? err.message : String(err)}}).catch(() => undefined);
        throw err;
      }
      controlLocked = err.message;
    }
    const result: BackupAllResult = {tenants: outcomes, control, ...(controlLocked ? {controlLocked} : {}), ...(keys ? {keys} : {})};
    const failed = outcomes.filter((o) => o.status === 'failed');
    const locked = outcomes.filter((o) => o.status === 'locked');
    if (failed.length > 0) {
      throw new PartialError(`${failed.length} of ${outcomes.length} tenant backups failed: ${failed.map((f) => `${f.tenant} (${f.error})`).join('; ')}`, {
        nextSteps: ['The other tenants were backed up. Fix the named ones and run: dforge backup --tenant <slug>'],
        data: {...result, control: control.map((c) => c.id)},
      });
    }
    if (locked.length > 0 && locked.length === outcomes.length) {
      const controlNote = control.length > 0 ? ` (dforge_control was backed up: ${control.map((c) => c.id).join(', ')})` : '';
      throw new LockedError(`every tenant was locked by other runs, so no tenant was backed up${controlNote}: ${locked.map((l) => `${l.tenant} (${l.error})`).join('; ')}`, {
        nextSteps: ['Those runs are backing the tenants up; check their results, then re-run if needed.'],
        data: {...result, control: control.map((c) => c.id)},
      });
    }
    return result;
  });
}
