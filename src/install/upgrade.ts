import {promises as fs} from 'node:fs';

import {withOpsRecord} from '../audit/record.js';
import {restoreTenant} from '../backup/restore.js';
import {backupAll, type BackupAllResult} from '../backup/service.js';
import {loadConfigFile} from '../config/load.js';
import {configSchema, type DforgeConfig} from '../config/schema.js';
import {usingControlPlane} from '../control/plane.js';
import {PartialError, UsageError, UserError} from '../errors.js';
import {changingTenants} from '../runtime/tenant-catalog.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {appendRelease, entryConfigText, historyFile, readReleaseHistory, releaseImages, type ReleaseEntry} from './release-history.js';

/** The local engine's id of an image, undefined when it is not there. Compose only: Kubernetes pulls from its registry. */
export type ImageIdOf = (ref: string) => Promise<string | undefined>;

export interface UpgradePlan {
  readonly from: string;
  readonly to: string;
  readonly backups: BackupAllResult;
  readonly images: Record<string, string>;
  /** Images set to something other than the old release's tag (a digest, another tag): left as they are. */
  readonly pinned: string[];
  /** The release-history entry this upgrade added. */
  readonly history: number;
}

const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?$/;

/**
 * Semantic-version precedence of two releases (negative: a before b), or undefined when either is
 * not MAJOR.MINOR.PATCH[-PRERELEASE]. dforge.yaml's release pattern allows prerelease tags
 * (1.2.0-rc.1) but no "+build" part, so precedence is total on what it accepts as semver: a
 * prerelease comes before its release, and prerelease fields compare numerically when both are
 * numbers, numbers before words, words in ASCII order, a longer list after its prefix.
 */
export function compareReleases(a: string, b: string): number | undefined {
  const ma = SEMVER.exec(a);
  const mb = SEMVER.exec(b);
  if (!ma || !mb) return undefined;
  for (let i = 1; i <= 3; i++) {
    const d = Number(ma[i]) - Number(mb[i]);
    if (d !== 0) return Math.sign(d);
  }
  const [pa, pb] = [ma[4], mb[4]];
  if (pa === undefined || pb === undefined) return pa === pb ? 0 : pa === undefined ? 1 : -1;
  const fa = pa.split('.');
  const fb = pb.split('.');
  for (let i = 0; i < Math.min(fa.length, fb.length); i++) {
    const [x, y] = [fa[i]!, fb[i]!];
    const [nx, ny] = [/^\d+$/.test(x), /^\d+$/.test(y)];
    if (nx && ny) {
      const d = Number(x) - Number(y);
      if (d !== 0) return Math.sign(d);
    } else if (nx !== ny) return nx ? -1 : 1;
    else if (x !== y) return x < y ? -1 : 1;
  }
  return Math.sign(fa.length - fb.length);
}

/** An embedded install runs the host's PostgreSQL binaries: it has no images and no release to move. */
function refuseEmbedded(config: DforgeConfig, command: string): void {
  if (config.target !== 'embedded') return;
  throw new UsageError(`${command} moves the images of a compose or Kubernetes install; this is an embedded install, which runs PostgreSQL from the host's binaries`, {
    nextSteps: ['Upgrade PostgreSQL on the host with its package manager, then restart it: dforge db stop; dforge db start'],
  });
}

/** The images the target runs, by service: compose has no use for the dforge image (cron runs the host's dforge). */
function runImages(images: ReleaseEntry['images'], target: DforgeConfig['target']): Record<string, string> {
  return Object.fromEntries(Object.entries(images).filter(([service]) => target === 'k8s' || service !== 'dforge').map(([s, i]) => [s, i.ref]));
}

/**
 * The first half of `dforge upgrade --to V`. Everything that can refuse is checked before anything
 * changes: a release not newer than this one (unless allowDowngrade), an upgrade that would run the
 * very same images, images of V missing from the engine. Then a backup of every tenant (and of
 * dforge_control), then dforge.yaml moved to release V, recorded in the release history. Images
 * pinned to the old release follow it; images pinned to anything else are the operator's choice
 * and stay. The caller then reconciles like install.
 */
export async function prepareUpgrade(
  dir: InstallDir,
  to: string,
  options: {allowDowngrade?: boolean; report: Parameters<typeof backupAll>[1]['report']; imageId: ImageIdOf; dforgeVersion: string; clock?: () => Date},
): Promise<UpgradePlan> {
  const config = await loadConfigFile(dir.configFile);
  refuseEmbedded(config, 'dforge upgrade');
  const parsedTo = configSchema.shape.release.safeParse(to);
  if (!parsedTo.success) throw new UsageError(`--to ${to}: ${parsedTo.error.issues[0]!.message}`, {nextSteps: ['Give a release version such as 1.4.2.']});
  const from = config.release;
  if (from === to) {
    throw new UsageError(`this install is already at release ${to}`, {nextSteps: ['To finish an interrupted upgrade, or to reconcile, run: dforge install']});
  }
  const order = compareReleases(to, from);
  if (!options.allowDowngrade && (order === undefined || order < 0)) {
    const why =
      order === undefined
        ? `${[from, to].filter((r) => !SEMVER.test(r)).join(' and ')} is not a semantic version (MAJOR.MINOR.PATCH[-PRERELEASE]), so dforge cannot tell whether ${to} is newer than ${from}`
        : `${to} is older than the current release ${from}`;
    throw new UserError(`refusing to move from release ${from} to ${to}: ${why}. Nothing was changed.`, {
      nextSteps: [
        `A downgrade runs the older release's software on data the newer one may have migrated. To return to the release this install ran before, with its config and images, run: dforge upgrade --rollback`,
        `If you mean it, re-run with: dforge upgrade --to ${to} --allow-downgrade`,
      ],
      data: {from, to},
    });
  }
  const images = {...config.images};
  const pinned: string[] = [];
  // Every image set in dforge.yaml, the backup job's dforge image included.
  const services = Object.keys(images) as Array<keyof typeof images>;
  for (const service of services) {
    const ref = images[service];
    if (ref?.endsWith(`:${from}`)) images[service] = `${ref.slice(0, -from.length)}${to}`;
    else if (ref) pinned.push(`${service}=${ref}`);
  }
  const next: DforgeConfig = {...config, release: to, images};
  const before = runImages(await releaseImages(config), config.target);
  const after = runImages(await releaseImages(next), config.target);
  if (Object.keys(after).every((service) => after[service] === before[service])) {
    throw new UserError(`upgrading to ${to} would change nothing: every image the stack runs is pinned to something other than release ${from}'s tag (${pinned.join(', ')}). Nothing was changed.`, {
      nextSteps: [
        `Set the images of release ${to} under images: in ${dir.configFile} (e.g. images.app: <repo>/app:${to}), or remove an entry so it follows the release (dforge/<service>:<release>), then run: dforge upgrade --to ${to}`,
        `Or, to record the new release with these images anyway, edit release: in ${dir.configFile} and run: dforge install`,
      ],
      data: {from, to, pinned},
    });
  }
  // Nothing changes unless every image of the new release is there to start. On Kubernetes the
  // cluster pulls them from its registry, which this host need not reach.
  const nextImages = await releaseImages(next, options.imageId);
  const missing = config.target === 'compose' ? [...new Set(Object.values(after))].filter((ref) => !Object.values(nextImages).some((i) => i.ref === ref && i.id)) : [];
  if (missing.length > 0) {
    throw new UserError(`the images of release ${to} are not in the local engine: ${missing.join(', ')}`, {
      nextSteps: ['Pull them (docker pull <image>) or load their archives (docker load -i <file>), then run the upgrade again. Nothing was changed.'],
    });
  }
  const history = await readReleaseHistory(dir);
  const text = await fs.readFile(dir.configFile, 'utf8');
  const fromImages = await releaseImages(config, options.imageId);
  // backupAll throws PartialError (exit 4) naming the tenants that failed: the upgrade stops before changing anything.
  const backups = await usingControlPlane(dir, (plane) => backupAll(plane, {concurrency: 2, clock: options.clock, report: options.report}));
  // The operator's file is edited in place (comments and layout kept), with the previous one beside it.
  const {parseDocument} = await import('yaml');
  const doc = parseDocument(text);
  doc.set('release', to);
  for (const service of services) if (images[service] !== config.images[service]) doc.setIn(['images', service], images[service]);
  const nextText = doc.toString({lineWidth: 0});
  const at = (options.clock ?? (() => new Date()))().toISOString();
  // The release running now enters the history if it is not its last entry: installed before
  // history was kept, or its release changed by an edit of dforge.yaml and dforge install.
  let current = history.entries.at(-1);
  if (current?.release !== from) {
    current = await appendRelease(dir, {action: 'baseline', release: from, images: fromImages, previous: current?.seq ?? null, backups: [], controlBackups: [], at, dforgeVersion: options.dforgeVersion}, text);
  }
  await writeFileAtomic(`${dir.configFile}.pre-upgrade-${from}`, text, {mode: 0o644});
  await writeFileAtomic(dir.configFile, nextText);
  const entry = await appendRelease(
    dir,
    {
      action: 'upgrade',
      release: to,
      images: nextImages,
      previous: current.seq,
      backups: backups.tenants.filter((t) => t.status === 'ok' && t.backupId).map((t) => ({tenant: t.tenant, backupId: t.backupId!})),
      controlBackups: backups.control.map((c) => c.id),
      at,
      dforgeVersion: options.dforgeVersion,
    },
    nextText,
  );
  return {from, to, backups, images: after, pinned, history: entry.seq};
}

export interface RollbackPlan {
  /** The entry being left and the one returned to. */
  readonly from: ReleaseEntry;
  readonly to: ReleaseEntry;
  readonly domain: string;
  /** With restoreBackups: the pre-upgrade backups to restore, one per tenant. */
  readonly restore: ReleaseEntry['backups'];
  readonly configText: string;
}

/**
 * Everything `dforge upgrade --rollback` checks before it changes anything: a history with a
 * release before this one, dforge.yaml still at the release the history last recorded, every image
 * of that release still in the engine as the very image it ran (a tag moved since is refused), and
 * with restoreBackups, pre-upgrade backups to restore.
 */
export async function planRollback(dir: InstallDir, options: {restoreBackups: boolean; imageId: ImageIdOf}): Promise<RollbackPlan> {
  const config = await loadConfigFile(dir.configFile);
  refuseEmbedded(config, 'dforge upgrade --rollback');
  const history = await readReleaseHistory(dir);
  const from = history.entries.at(-1);
  if (!from) {
    throw new UserError(`no release history in ${historyFile(dir)}: there is no earlier release to return to. Nothing was changed.`, {
      nextSteps: ['dforge upgrade --to <release> records each release it moves to; rollback returns to the one before. To move to a given release now: dforge upgrade --to <release> (--allow-downgrade if it is older).'],
    });
  }
  if (from.release !== config.release) {
    throw new UserError(`${dir.configFile} says release ${config.release}, but the last release dforge upgrade recorded is ${from.release}: the release was changed outside dforge upgrade. Nothing was changed.`, {
      nextSteps: [`Put release: ${from.release} back in ${dir.configFile} and run the rollback again, or move on with: dforge upgrade --to <release>`],
    });
  }
  const to = from.previous === null ? undefined : history.entries.find((e) => e.seq === from.previous);
  if (!to) {
    throw new UserError(`release ${from.release} is the first release in the history: there is none before it to return to. Nothing was changed.`, {
      nextSteps: ['To move to a given release: dforge upgrade --to <release> (--allow-downgrade if it is older).'],
    });
  }
  if (options.restoreBackups && from.backups.length === 0) {
    throw new UserError(`release ${from.release} was not reached by an upgrade that took backups (${from.action}), so there are no pre-upgrade backups to restore. Nothing was changed.`, {
      nextSteps: ['Run the rollback without --restore-backups, then restore tenants one by one: dforge backup list; dforge restore --tenant <slug> --from <id>'],
    });
  }
  if (config.target === 'compose') {
    const problems: string[] = [];
    for (const image of Object.values(to.images)) {
      if (!image.id) continue;
      const id = await options.imageId(image.ref);
      if (id === undefined) problems.push(`${image.ref} is not in the local engine (it was ${image.id})`);
      else if (id !== image.id) problems.push(`${image.ref} now names ${id}, not the image release ${to.release} ran (${image.id})`);
    }
    if (problems.length > 0) {
      throw new UserError(`the images release ${to.release} ran are not all in the engine as they were: ${problems.join('; ')}. Nothing was changed.`, {
        nextSteps: ['Load or pull them (docker load -i <file>, docker pull <image>); if the image is still there under its id: docker tag <id> <ref>. Then run the rollback again.'],
      });
    }
  }
  return {from, to, domain: config.domain, restore: options.restoreBackups ? from.backups : [], configText: await entryConfigText(dir, to)};
}

/**
 * Puts the dforge.yaml of the release returned to in place and records the rollback in the history
 * (the replaced file kept beside its entry). A later rollback goes to where that release came from.
 */
export async function applyRollback(dir: InstallDir, plan: RollbackPlan, options: {dforgeVersion: string; clock?: () => Date}): Promise<ReleaseEntry> {
  const replaced = await fs.readFile(dir.configFile, 'utf8');
  await writeFileAtomic(dir.configFile, plan.configText);
  const at = (options.clock ?? (() => new Date()))().toISOString();
  return appendRelease(
    dir,
    {action: 'rollback', release: plan.to.release, images: plan.to.images, previous: plan.to.previous, backups: [], controlBackups: [], at, dforgeVersion: options.dforgeVersion},
    plan.configText,
    replaced,
  );
}

export interface RestoredTenant {
  readonly tenant: string;
  readonly backupId: string;
  readonly database: string;
  readonly previousDatabase: string | null;
}

/**
 * Restores each tenant from its pre-upgrade backup, through the same restore as `dforge restore`
 * (verified first; the live database kept as <db>__pre_restore_<ts>), each in the ops log. One
 * failure never stops the others; failures make a PartialError (exit 4) naming them.
 */
export async function restorePreUpgradeBackups(dir: InstallDir, backups: ReleaseEntry['backups'], options: {clock?: () => Date} = {}): Promise<RestoredTenant[]> {
  return usingControlPlane(dir, async (plane) => {
    const restored: RestoredTenant[] = [];
    const failed: string[] = [];
    for (const {tenant, backupId} of backups) {
      try {
        const r = await withOpsRecord(
          plane,
          {action: 'restore.tenant', target: `tenant:${tenant}`, details: (x) => ({backupId: x.backupId, from: tenant, database: x.database, previousDatabase: x.previousDatabase, by: 'upgrade --rollback'})},
          // The operator confirmed the rollback's restores as a whole (--confirm <domain>).
          () => changingTenants(plane, [tenant], () => restoreTenant(plane, {tenant, from: backupId, confirm: tenant, clock: options.clock})),
        );
        restored.push({tenant, backupId, database: r.database, previousDatabase: r.previousDatabase});
      } catch (err) {
        failed.push(`${tenant} from ${backupId} (${err instanceof Error ? err.message : String(err)})`);
      }
    }
    if (failed.length > 0) {
      throw new PartialError(`${failed.length} of ${backups.length} tenant restores failed: ${failed.join('; ')}`, {
        nextSteps: ['The release was rolled back and the other tenants restored. Fix the named ones and run: dforge restore --tenant <slug> --from <id> --confirm <slug>'],
        data: {restored, failed},
      });
    }
    return restored;
  });
}
