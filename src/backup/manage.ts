import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type {ControlPlane} from '../control/plane.js';
import {selfCommand} from '../cli/self-command.js';
import {VerificationError} from '../errors.js';
import {PREVIOUS_DATABASE_PATTERN} from '../tenants/databases.js';
import type {InstallDir} from '../state/install-dir.js';
import {BackupCatalog, MANIFEST_SUFFIX, manifestLocation, recordFromManifest, type BackupManifest, type BackupRecord} from './catalog.js';
import type {BackupDestination} from './backup-destination.js';
import {regionDestinations} from './destination.js';
import {releaseRetiredKeys, removeBackup, type KeyRelease} from './removal.js';
import {lastBackupState, type TenantBackupState} from './service.js';
import {authenticateBackup, checkDigest, destinationSource, readWhole, type AuthenticatedBackup, type FileDigest} from './verify.js';

/** The catalog, newest first, with the last-success marker of each tenant (what monitoring reads). */
export async function listBackups(plane: ControlPlane, options: {tenant?: string; clock?: () => Date}): Promise<{backups: BackupRecord[]; tenants: TenantBackupState[]}> {
  const now = (options.clock ?? (() => new Date()))();
  const backups = await new BackupCatalog(plane.control).list({tenant: options.tenant});
  const slugs = options.tenant ? [options.tenant] : (await plane.tenants.list()).map((t) => t.slug);
  const tenants: TenantBackupState[] = [];
  for (const tenant of slugs) tenants.push(await lastBackupState(plane.keys.dir, tenant, now));
  return {backups, tenants};
}

/** One file rebuild-catalog looked at and did not already know. */
export interface RebuildEntry {
  readonly destination: string;
  readonly region: string;
  readonly location: string;
  /**
   * added: authenticated, matched its manifest and place, and is now in the catalog;
   * duplicate: authentic, but the catalog has that backup id elsewhere;
   * tampered: failed authentication or does not match its manifest or place (not adopted);
   * unreadable: its key does not exist here (a shredded tenant, another install);
   * no-file: a manifest whose file is missing.
   */
  readonly status: 'added' | 'duplicate' | 'tampered' | 'unreadable' | 'no-file';
  readonly backupId?: string;
  readonly tenant?: string;
  readonly reason?: string;
}

export interface RebuildResult {
  /** Backup files looked at. */
  readonly scanned: number;
  readonly added: number;
  /** Files the catalog already listed (left alone; `backup verify` checks them). */
  readonly known: number;
  readonly entries: RebuildEntry[];
}

/**
 * Adopts into the catalog the backup files of every destination that it does not list (after
 * `restore --control`, or a run killed between its rename and its catalog row). A file is adopted
 * only once its header is authenticated, equals its manifest and its place in the destination, and
 * every chunk decrypts: a manifest is unauthenticated, so it is evidence of nothing by itself. A
 * killed run's file without a manifest is adopted the same way, and its manifest written.
 */
export async function rebuildCatalog(plane: ControlPlane): Promise<RebuildResult> {
  const catalog = new BackupCatalog(plane.control);
  const known = await catalog.locations();
  const entries: RebuildEntry[] = [];
  let scanned = 0;
  let knownCount = 0;
  for (const region of Object.keys(plane.config.regions)) {
    for (const destination of regionDestinations(plane, region)) {
      const files = await destination.list('');
      const present = new Set(files);
      for (const location of files) {
        if (location.endsWith(MANIFEST_SUFFIX)) {
          if (!present.has(location.slice(0, -MANIFEST_SUFFIX.length))) entries.push({destination: destination.name, region, location, status: 'no-file'});
          continue;
        }
        if (!location.endsWith('.dfb')) continue;
        scanned++;
        if (known.has(`${destination.name}:${location}`)) {
          knownCount++;
          continue;
        }
        entries.push(await adopt(plane, catalog, destination, location));
      }
    }
  }
  return {scanned, added: entries.filter((e) => e.status === 'added').length, known: knownCount, entries};
}

/** Tampered files found while rebuilding the catalog make the command exit 6, after everything else was done. */
export function throwIfTampered(result: RebuildResult, done: string): void {
  const tampered = result.entries.filter((e) => e.status === 'tampered');
  if (tampered.length === 0) return;
  throw new VerificationError(`${done}, but ${tampered.length} backup file(s) failed verification and were not adopted: ${tampered.map((e) => `${e.destination}:${e.location}`).join(', ')}`, {
    nextSteps: ['Do not use these files. Move them out of the destination, and find out who can write to it.'],
    data: {...result},
  });
}

async function adopt(plane: ControlPlane, catalog: BackupCatalog, destination: BackupDestination, location: string): Promise<RebuildEntry> {
  const where = {destination: destination.name, region: destination.region, location};
  let auth: AuthenticatedBackup;
  let digest: FileDigest;
  try {
    auth = await authenticateBackup(plane, destinationSource(destination, location));
    digest = await readWhole(auth, {decrypt: true});
    checkDigest(auth, digest);
  } catch (err) {
    if (!(err instanceof VerificationError)) throw err;
    return {...where, status: err.data.reason === 'key-missing' ? 'unreadable' : 'tampered', reason: err.message};
  }
  const h = auth.header;
  const manifest: BackupManifest = auth.manifest ?? {format: 'dforge-backup-manifest/1', ...h, destination: destination.name, location, size: digest.size, sha256: digest.sha256};
  if (!auth.manifest) await destination.putSmall(manifestLocation(location), `${JSON.stringify(manifest, null, 2)}\n`);
  const added = await catalog.add(recordFromManifest(manifest));
  return {...where, backupId: h.backupId, tenant: h.tenant, status: added ? 'added' : 'duplicate'};
}

export interface RetentionPolicy {
  readonly keepLast: number;
  readonly keepDaily: number;
  readonly keepWeekly: number;
  readonly keepMonthly: number;
}

/** What a retention policy does with one backup; a backup it does not keep says why. */
export type RetentionDecision = {readonly keep: true} | {readonly keep: false; readonly why: string};

/**
 * Which backups a retention policy keeps: the newest `keepLast`, plus the newest backup of each of
 * the last `keepDaily` days, `keepWeekly` ISO weeks and `keepMonthly` months that have one. Ordered
 * by recorded time, never by name. The newest verified backup is always kept. A backup no rule keeps
 * carries, rule by rule, why that rule passed it over: what an operator checks before a prune.
 */
export function retentionDecisions(backups: readonly BackupRecord[], policy: RetentionPolicy): Map<string, RetentionDecision> {
  const ordered = [...backups].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
  const keep = new Set(ordered.slice(0, policy.keepLast).map((b) => b.id));
  const passedOver = new Map<string, {newer: Array<[string, string]>; beyond: string[]}>(ordered.slice(policy.keepLast).map((b) => [b.id, {newer: [], beyond: []}]));
  const bucket = (rule: string, units: readonly [string, string], fmt: (d: Date) => string, count: number): void => {
    // A rule set to 0 keeps nothing and has nothing to say.
    if (count === 0) return;
    const seen = new Set<string>();
    for (const b of ordered) {
      const key = fmt(new Date(b.createdAt));
      if (seen.has(key)) {
        passedOver.get(b.id)?.newer.push([key, `${rule} ${count}`]);
      } else if (seen.size >= count) {
        passedOver.get(b.id)?.beyond.push(`${key} is beyond the ${count === 1 ? `newest ${units[0]}` : `${count} newest ${units[1]}`} with a backup (${rule} ${count})`);
      } else {
        seen.add(key);
        keep.add(b.id);
      }
    }
  };
  bucket('keep-daily', ['day', 'days'], (d) => d.toISOString().slice(0, 10), policy.keepDaily);
  bucket('keep-weekly', ['ISO week', 'ISO weeks'], isoWeek, policy.keepWeekly);
  bucket('keep-monthly', ['month', 'months'], (d) => d.toISOString().slice(0, 7), policy.keepMonthly);
  const newestVerified = ordered.find((b) => b.verifiedAt !== null);
  if (newestVerified) keep.add(newestVerified.id);
  const why = (id: string): string => {
    const {newer, beyond} = passedOver.get(id)!;
    const superseded = newer.length > 0 ? [`a newer backup is kept for ${newer.map(([key]) => key).join(', ')} (${newer.map(([, rule]) => rule).join(', ')})`] : [];
    return [`not among the newest ${policy.keepLast} (keep-last ${policy.keepLast})`, ...superseded, ...beyond].join('; ');
  };
  return new Map(ordered.map((b) => [b.id, keep.has(b.id) ? {keep: true} : {keep: false, why: why(b.id)}]));
}

function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = new Date(Date.UTC(t.getUTCFullYear(), 0, 1));
  return `${t.getUTCFullYear()}-W${Math.ceil(((t.getTime() - yearStart.getTime()) / 864e5 + 1) / 7)}`;
}

export interface PruneResult {
  readonly kept: string[];
  readonly deleted: string[];
  readonly droppedDatabases: string[];
  /** Retired master versions released afterwards (not on a dry run). */
  readonly keys?: KeyRelease;
}

/** A backup a prune deleted (or, on a dry run, would delete), and the retention rules that let it go. */
export interface PrunedBackup {
  readonly id: string;
  readonly kind: BackupRecord['kind'];
  readonly tenant: string;
  readonly region: string;
  readonly createdAt: string;
  readonly size: number;
  readonly why: string;
}

/** The prune's result plus, for the operator, each deleted backup with its reason. */
export interface PruneReport extends PruneResult {
  readonly removals: PrunedBackup[];
}

/**
 * Deletes what the policy does not keep, per tenant (and for control backups), and drops the
 * databases a restore kept as <db>__pre_restore_<ts> once they are older than `keepPreRestoreHours`.
 * `dryRun` only reports.
 */
export async function pruneBackups(
  plane: ControlPlane,
  policy: RetentionPolicy,
  options: {tenant?: string; dryRun: boolean; keepPreRestoreHours: number; clock?: () => Date},
): Promise<PruneReport> {
  const catalog = new BackupCatalog(plane.control);
  const all = await catalog.list({tenant: options.tenant});
  const groups = new Map<string, BackupRecord[]>();
  for (const b of all) groups.set(`${b.kind}:${b.tenant}:${b.region}`, [...(groups.get(`${b.kind}:${b.tenant}:${b.region}`) ?? []), b]);
  const kept: string[] = [];
  const removals: PrunedBackup[] = [];
  for (const group of groups.values()) {
    const decisions = retentionDecisions(group, policy);
    for (const b of group) {
      const decision = decisions.get(b.id)!;
      if (decision.keep) {
        kept.push(b.id);
        continue;
      }
      if (!options.dryRun) await removeBackup(plane, b);
      removals.push({id: b.id, kind: b.kind, tenant: b.tenant, region: b.region, createdAt: b.createdAt, size: b.size, why: decision.why});
    }
  }
  const droppedDatabases = await dropOldPreRestoreDatabases(plane, {tenant: options.tenant, olderThanHours: options.keepPreRestoreHours, dryRun: options.dryRun, now: (options.clock ?? (() => new Date()))()});
  // Pruning may have deleted the last control backups that kept a retired master version alive.
  const keys = options.dryRun ? undefined : await releaseRetiredKeys(plane, 'backup prune');
  return {kept, deleted: removals.map((r) => r.id), droppedDatabases, ...(keys ? {keys} : {}), removals};
}

/** The databases restores kept aside (see tenants/databases.ts for their names). */
async function dropOldPreRestoreDatabases(plane: ControlPlane, o: {tenant?: string; olderThanHours: number; dryRun: boolean; now: Date}): Promise<string[]> {
  const dropped: string[] = [];
  for (const tenant of (await plane.tenants.list()).filter((t) => !o.tenant || t.slug === o.tenant)) {
    await plane.tenants.onTenantCluster(tenant.slug, async (databases) => {
      const pattern = new RegExp(PREVIOUS_DATABASE_PATTERN(tenant));
      for (const name of await databases.all()) {
        const ts = pattern.exec(name)?.[2];
        if (ts === undefined || o.now.getTime() - Number.parseInt(ts, 36) * 1000 < o.olderThanHours * 36e5) continue;
        dropped.push(name);
        if (!o.dryRun) await databases.drop(name);
      }
    });
  }
  return dropped;
}

export interface Schedule {
  readonly kind: 'cron' | 'systemd';
  readonly files: Record<string, string>;
  readonly installed: boolean;
}

/**
 * The cron line or systemd timer that runs `dforge backup --all`, as the user running this
 * command, with DFORGE_HOME and this dforge spelled out (src/cli/self-command.ts).
 */
export async function backupSchedule(dir: InstallDir, options: {kind: 'cron' | 'systemd'; at: string; install: boolean}): Promise<Schedule> {
  const user = os.userInfo().username;
  const [hour, minute] = options.at.split(':').map(Number) as [number, number];
  const command = [...selfCommand(), 'backup', '--all', '--dir', dir.root, '--quiet'].join(' ');
  const files: Record<string, string> =
    options.kind === 'cron'
      ? {
          '/etc/cron.d/dforge-backup': `# dForge: encrypted backups of every tenant and of dforge_control. Output is mailed by cron.\nSHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nDFORGE_HOME=${dir.root}\n${minute} ${hour} * * * ${user} ${command}\n`,
        }
      : {
          '/etc/systemd/system/dforge-backup.service': `[Unit]\nDescription=dForge encrypted tenant backups\nAfter=network-online.target\n\n[Service]\nType=oneshot\nUser=${user}\nEnvironment=DFORGE_HOME=${dir.root}\nExecStart=${command}\nNice=10\nIOSchedulingClass=best-effort\n`,
          '/etc/systemd/system/dforge-backup.timer': `[Unit]\nDescription=Run dForge backups daily\n\n[Timer]\nOnCalendar=*-*-* ${String(hour).padStart(2, '0')}:${String(minute).padStart(2, '0')}:00\nPersistent=true\nRandomizedDelaySec=300\n\n[Install]\nWantedBy=timers.target\n`,
        };
  if (options.install) {
    for (const [file, content] of Object.entries(files)) {
      await fs.mkdir(path.dirname(file), {recursive: true});
      await fs.writeFile(file, content, {mode: 0o644});
    }
  }
  return {kind: options.kind, files, installed: options.install};
}
