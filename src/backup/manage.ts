import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import type {ControlPlane} from '../control/plane.js';
import {PREVIOUS_DATABASE_PATTERN} from '../tenants/databases.js';
import type {InstallDir} from '../state/install-dir.js';
import {BackupCatalog, manifestLocation, recordFromManifest, type BackupManifest, type BackupRecord} from './catalog.js';
import {lastSuccessFile, regionDestinations} from './service.js';

export interface TenantBackupState {
  readonly tenant: string;
  readonly lastSuccess: string | null;
  /** Hours since the last successful backup; null if there never was one. */
  readonly staleHours: number | null;
}

/** The catalog, newest first, with the last-success marker of each tenant (what monitoring reads). */
export async function listBackups(plane: ControlPlane, options: {tenant?: string; clock?: () => Date}): Promise<{backups: BackupRecord[]; tenants: TenantBackupState[]}> {
  const now = (options.clock ?? (() => new Date()))();
  const backups = await new BackupCatalog(plane.control).list({tenant: options.tenant});
  const slugs = options.tenant ? [options.tenant] : (await plane.tenants.list()).map((t) => t.slug);
  const tenants: TenantBackupState[] = [];
  for (const tenant of slugs) {
    const marker = await fs.readFile(lastSuccessFile(plane.keys.dir, tenant), 'utf8').then((t) => JSON.parse(t) as {at: string}, () => undefined);
    tenants.push({tenant, lastSuccess: marker?.at ?? null, staleHours: marker ? Math.round((now.getTime() - Date.parse(marker.at)) / 36e5) : null});
  }
  return {backups, tenants};
}

/**
 * Rebuilds catalog entries from the manifests in every destination (after `restore --control`,
 * or to adopt backups the catalog does not know). Existing entries are left alone.
 */
export async function rebuildCatalog(plane: ControlPlane): Promise<{added: number; scanned: number}> {
  const catalog = new BackupCatalog(plane.control);
  let added = 0;
  let scanned = 0;
  for (const region of Object.keys(plane.config.regions)) {
    for (const destination of regionDestinations(plane, region)) {
      for (const location of await destination.list('')) {
        if (!location.endsWith('.manifest.json')) continue;
        const manifest = JSON.parse(await destination.readSmall(location)) as BackupManifest;
        // A manifest whose data file is gone (or was never completed) describes no backup.
        if (manifestLocation(manifest.location) !== location || (await destination.size(manifest.location).catch(() => -1)) !== manifest.size) continue;
        scanned++;
        if (await catalog.add(recordFromManifest(manifest))) added++;
      }
    }
  }
  return {added, scanned};
}

export interface RetentionPolicy {
  readonly keepLast: number;
  readonly keepDaily: number;
  readonly keepWeekly: number;
  readonly keepMonthly: number;
}

/**
 * Which backups a retention policy keeps: the newest `keepLast`, plus the newest backup of each of
 * the last `keepDaily` days, `keepWeekly` ISO weeks and `keepMonthly` months that have one. Ordered
 * by recorded time, never by name. The newest verified backup is always kept.
 */
export function selectRetained(backups: readonly BackupRecord[], policy: RetentionPolicy): Set<string> {
  const ordered = [...backups].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
  const keep = new Set(ordered.slice(0, policy.keepLast).map((b) => b.id));
  const bucket = (fmt: (d: Date) => string, count: number): void => {
    const seen = new Set<string>();
    for (const b of ordered) {
      const key = fmt(new Date(b.createdAt));
      if (seen.has(key)) continue;
      if (seen.size >= count) break;
      seen.add(key);
      keep.add(b.id);
    }
  };
  bucket((d) => d.toISOString().slice(0, 10), policy.keepDaily);
  bucket(isoWeek, policy.keepWeekly);
  bucket((d) => d.toISOString().slice(0, 7), policy.keepMonthly);
  const newestVerified = ordered.find((b) => b.verifiedAt !== null);
  if (newestVerified) keep.add(newestVerified.id);
  return keep;
}

function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day);
  const yearStart = new Date(Date.UTC(t.getUTCFullYear(), 0, 1));
  return `${t.getUTCFullYear()}-W${Math.ceil(((t.getTime() - yearStart.getTime()) / 864e5 + 1) / 7)}`;
}

/**
 * Deletes what the policy does not keep, per tenant (and for control backups), and drops the
 * databases a restore kept as <db>_pre_restore_<ts> once they are older than `keepPreRestoreHours`.
 * `dryRun` only reports.
 */
export async function pruneBackups(
  plane: ControlPlane,
  policy: RetentionPolicy,
  options: {tenant?: string; dryRun: boolean; keepPreRestoreHours: number; clock?: () => Date},
): Promise<{kept: string[]; deleted: string[]; droppedDatabases: string[]}> {
  const catalog = new BackupCatalog(plane.control);
  const all = await catalog.list({tenant: options.tenant});
  const groups = new Map<string, BackupRecord[]>();
  for (const b of all) groups.set(`${b.kind}:${b.tenant}:${b.region}`, [...(groups.get(`${b.kind}:${b.tenant}:${b.region}`) ?? []), b]);
  const kept: string[] = [];
  const deleted: string[] = [];
  for (const group of groups.values()) {
    const keep = selectRetained(group, policy);
    for (const b of group) {
      if (keep.has(b.id)) {
        kept.push(b.id);
        continue;
      }
      deleted.push(b.id);
      if (options.dryRun) continue;
      const destination = regionDestinations(plane, b.region).find((d) => d.name === b.destination);
      // The catalog entry goes first: a crash leaves an orphan file (rebuildable), never an entry without its file.
      await catalog.remove(b.id);
      await destination?.remove(manifestLocation(b.location));
      await destination?.remove(b.location);
    }
  }
  const droppedDatabases = await dropOldPreRestoreDatabases(plane, {tenant: options.tenant, olderThanHours: options.keepPreRestoreHours, dryRun: options.dryRun, now: (options.clock ?? (() => new Date()))()});
  return {kept, deleted, droppedDatabases};
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
 * command, with DFORGE_HOME and the node binary spelled out (cron has almost no environment).
 */
export async function backupSchedule(dir: InstallDir, options: {kind: 'cron' | 'systemd'; at: string; install: boolean; cliPath: string}): Promise<Schedule> {
  const user = os.userInfo().username;
  const node = process.execPath;
  const [hour, minute] = options.at.split(':').map(Number) as [number, number];
  const command = `${node} ${options.cliPath} backup --all --dir ${dir.root} --quiet`;
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
