import {promises as fs} from 'node:fs';
import path from 'node:path';

import {serviceHost} from '../certs/service-names.js';
import type {ClusterConfig, DforgeConfig} from '../config/schema.js';
import {caFileOf, clustersOf} from '../control/clusters.js';
import type {ControlPlane} from '../control/plane.js';
import {byCodePoint} from '../render/rendered-file.js';
import {APP_UID} from '../render/values.js';
import {LockedError, UserError} from '../errors.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import {acquireLock, type LockHandle} from '../state/lock.js';
import type {InstallDir} from '../state/install-dir.js';
import {MoveJournal} from '../tenants/move-journal.js';
import {stampsDigest} from '../tenants/sealed-passwords.js';
import {ensureRuntimeDir, writeRuntimeFile, type Ownership} from './runtime-files.js';

/**
 * How the app learns of tenants, with no shared connection: runtime/tenants/ holds a catalog and
 * one password file per active tenant. On compose they are owned by the app's user and mounted
 * read-only into the app at /run/dforge/tenants, and the app is sent SIGHUP after a change; on an
 * embedded install the app runs on the host and reads them where they are, owned by the user who
 * runs dforge. Nothing goes through environment variables.
 */
export const CATALOG_MOUNT = '/run/dforge/tenants';

export interface CatalogEntry {
  readonly slug: string;
  readonly database: string;
  readonly role: string;
  readonly host: string;
  readonly port: number;
  readonly sslmode: 'verify-full';
  /** Absent while the tenant is suspended: a suspended tenant's password is not handed out. */
  readonly passwordFile?: string;
  /** Embedded installs only: the CA file on the host (in a container the app has its own mount). */
  readonly sslrootcert?: string;
  readonly status: 'active' | 'suspended';
  /**
   * Present while a tenant move holds the tenant frozen (src/tenants/move.ts): its role can't log
   * in until the move finishes, so the app should answer "moving, try later" instead of failing
   * on a refused connection.
   */
  readonly moving?: true;
}

export interface CatalogPublication {
  readonly skipped?: string;
  readonly tenants: number;
  readonly changed: boolean;
  /** App containers sent SIGHUP. */
  readonly signalled: number;
  /**
   * Tenants left out because dforge.yaml now puts their cluster in another region than their pin:
   * the app is never pointed at a tenant's data outside its region.
   */
  readonly misplaced?: string[];
}

export const tenantsRuntimeDir = (dir: InstallDir): string => path.join(dir.runtimeDir, 'tenants');

const APP: Ownership = {uid: APP_UID, gid: APP_UID};

/**
 * Where the app reaches a cluster, or undefined when it cannot: inside the compose network or the
 * namespace, the bundled cluster is the postgres service, by the name its certificate carries; an
 * external cluster is at its own address; on an embedded install the app runs on the host, where
 * the embedded cluster listens on loopback. A compose or Kubernetes app cannot reach an embedded one.
 */
export function appAddress(config: DforgeConfig, cluster: ClusterConfig): {host: string; port: number} | undefined {
  switch (cluster.kind) {
    case 'bundled':
      return {host: serviceHost(config, 'postgres'), port: 5432};
    case 'external':
      return {host: cluster.host, port: cluster.port};
    case 'embedded':
      return config.target === 'embedded' ? {host: '127.0.0.1', port: cluster.port} : undefined;
  }
}

/** The catalog's bytes: what the app reads, in both runtimes. */
export const catalogText = (entries: readonly CatalogEntry[]): string => `${JSON.stringify({version: 1, tenants: entries}, null, 2)}\n`;

/**
 * Which tenants' password files a publication stats and checks against their sealed passwords:
 * `'all'` (a full reconcile: install, a quickstart re-run), or the tenants a change named.
 */
export type RecheckScope = 'all' | readonly string[];

/**
 * Rewrites the app's view of tenants from the registry: runtime/tenants/ (plus SIGHUP to the app on
 * compose), or the tenant Secrets of the overlay plus `kubectl apply` on Kubernetes. The catalog is
 * always rebuilt whole; which password files are checked is `recheck` (see writeTenantFiles).
 */
export async function publishTenantCatalog(plane: ControlPlane, recheck: RecheckScope = 'all'): Promise<CatalogPublication> {
  const dir = plane.keys.dir;
  const embedded = plane.config.target === 'embedded';
  return withTenantCatalogLock(dir, async () => {
    // How the app reaches each cluster, worked out once per cluster rather than once per tenant.
    const reach = new Map<string, {region: string; address?: {host: string; port: number}; sslrootcert?: string}>();
    for (const [name, {region, cluster}] of clustersOf(plane.config)) {
      reach.set(name, {region, address: appAddress(plane.config, cluster), ...(embedded ? {sslrootcert: caFileOf(dir, cluster)} : {})});
    }
    const entries: CatalogEntry[] = [];
    const activeSlugs: string[] = [];
    const misplaced: string[] = [];
    const moving = await new MoveJournal(plane.control).openSlugs();
    const passwordDir = embedded ? tenantsRuntimeDir(dir) : CATALOG_MOUNT;
    for (const tenant of await plane.tenants.list()) {
      if (tenant.status !== 'active' && tenant.status !== 'suspended') continue;
      const placed = reach.get(tenant.cluster);
      if (placed && placed.region !== tenant.region) {
        misplaced.push(tenant.slug);
        continue;
      }
      const address = placed?.address;
      if (!address) continue;
      // A suspended tenant stays in the catalog without a password: the app cannot reach it.
      const active = tenant.status === 'active';
      if (active) activeSlugs.push(tenant.slug);
      const passwordFile = `${passwordDir}/${tenant.slug}.password`;
      entries.push({
        slug: tenant.slug,
        database: tenant.database,
        role: tenant.role,
        ...address,
        sslmode: 'verify-full',
        ...(active ? {passwordFile} : {}),
        ...(placed.sslrootcert === undefined ? {} : {sslrootcert: placed.sslrootcert}),
        status: tenant.status,
        ...(moving.has(tenant.slug) ? {moving: true as const} : {}),
      });
    }
    entries.sort((a, b) => byCodePoint(a.slug, b.slug));
    const refused = misplaced.length > 0 ? {misplaced} : {};
    if (plane.config.target === 'k8s') {
      const {publishKubernetesTenants} = await import('../k8s/overlay.js');
      const passwords = new Map<string, string>();
      for (const slug of activeSlugs) passwords.set(slug, await plane.tenants.password(slug));
      const r = await publishKubernetesTenants(dir, plane.config, catalogText(entries), passwords);
      return {tenants: entries.length, changed: r.changed, signalled: 0, ...(r.applied ? {} : {skipped: r.note}), ...refused};
    }
    // An app on the host runs as whoever operates the install; no process is told: it re-reads the
    // files when it next needs them (a reload, a new connection).
    const owner: Ownership = embedded ? {uid: process.geteuid?.() ?? 0, gid: process.getegid?.() ?? 0} : APP;
    const changed = await writeTenantFiles(
      dir,
      catalogText(entries),
      {
        slugs: activeSlugs,
        recheck,
        stamps: (slugs) => plane.tenants.passwordStamps(slugs),
        stampsDigest: (slugs) => plane.tenants.passwordStampsDigest(slugs),
        open: (slug) => plane.tenants.password(slug),
      },
      owner,
    );
    const signalled = changed && !embedded ? await signalApp(plane.config.compose.project) : 0;
    return {tenants: entries.length, changed, signalled, ...refused};
  });
}

/** Where the last publication recorded, per tenant, the sealed password it wrote and the file it left. */
const publishedFile = (dir: InstallDir): string => path.join(dir.runtimeDir, 'tenants-published.json');

/**
 * runtime/tenants/ (0700): the catalog and one 0400 password file per active tenant, all owned by
 * `owner`. A password is opened and its file written only when its sealed password or the file
 * itself changed since the last publication (tenants-published.json records both).
 *
 * A full reconcile stats every file. A tenant change stats the files of the tenants it named; of
 * every other tenant it checks that its file is there and was published (one directory read) and,
 * with one digest for all of them, that no sealed password changed since. If one did (a rotation
 * killed before it published, a restored dforge_control), the publication checks every file, as a
 * full one. So a create does no per-tenant password work, and a file a killed run left missing or
 * stale is put right by the next change of any tenant; only a file edited by hand waits for that
 * tenant's next change or the next full reconcile.
 */
async function writeTenantFiles(
  dir: InstallDir,
  catalog: string,
  passwords: {
    slugs: readonly string[];
    recheck: RecheckScope;
    stamps: (slugs: readonly string[]) => Promise<ReadonlyMap<string, string>>;
    stampsDigest: (slugs: readonly string[]) => Promise<string>;
    open: (slug: string) => Promise<string>;
  },
  owner: Ownership,
): Promise<boolean> {
  const target = tenantsRuntimeDir(dir);
  await ensureRuntimeDir(target, {mode: 0o700, owner});
  const present = new Set(await fs.readdir(target));
  const before = await readPublished(dir);
  const checked = new Set(passwords.slugs);
  if (passwords.recheck !== 'all') {
    // The tenants the change did not name, whose files are there and were published: trusted if,
    // all together, their sealed passwords are still the ones published (one digest, one row).
    const named = new Set(passwords.recheck);
    const published = new Map<string, string>();
    for (const slug of passwords.slugs) {
      const sealed = before[slug]?.sealed;
      if (!named.has(slug) && sealed && present.has(`${slug}.password`)) published.set(slug, sealed);
    }
    if (published.size > 0 && (await passwords.stampsDigest([...published.keys()])) === stampsDigest(published)) {
      for (const slug of published.keys()) checked.delete(slug);
    }
  }
  const stamps = checked.size === 0 ? new Map<string, string>() : await passwords.stamps([...checked]);
  const after: Record<string, {sealed: string; file: string}> = {};
  let changed = false;
  const keep = new Set<string>(['catalog.json']);
  for (const slug of passwords.slugs) {
    keep.add(`${slug}.password`);
    if (!checked.has(slug)) {
      after[slug] = before[slug]!;
      continue;
    }
    const file = path.join(target, `${slug}.password`);
    const sealed = stamps.get(slug) ?? '';
    let stamp = await fileStamp(file);
    if (!(before[slug]?.sealed === sealed && stamp !== undefined && before[slug]?.file === stamp)) {
      changed = (await writeRuntimeFile(file, await passwords.open(slug), {mode: 0o400, owner})) || changed;
      stamp = await fileStamp(file);
    }
    after[slug] = {sealed, file: stamp ?? ''};
  }
  changed = (await writeRuntimeFile(path.join(target, 'catalog.json'), catalog, {mode: 0o400, owner})) || changed;
  // A deleted or suspended tenant's password leaves the app's view too.
  for (const name of present) {
    if (!keep.has(name)) {
      await fs.rm(path.join(target, name), {force: true});
      changed = true;
    }
  }
  await writeFileAtomic(publishedFile(dir), `${JSON.stringify(after)}\n`, {mode: 0o600});
  return changed;
}

/** A file's identity, content stamp, mode and owner: any write, chmod or chown changes it. */
async function fileStamp(file: string): Promise<string | undefined> {
  const st = await fs.stat(file, {bigint: true}).catch(() => undefined);
  return st && `${st.ino}:${st.mtimeNs}:${st.size}:${st.mode}:${st.uid}:${st.gid}`;
}

async function readPublished(dir: InstallDir): Promise<Record<string, {sealed: string; file: string}>> {
  try {
    return JSON.parse(await fs.readFile(publishedFile(dir), 'utf8')) as Record<string, {sealed: string; file: string}>;
  } catch {
    // Missing or unreadable: every password is opened and compared, as on a first publication.
    return {};
  }
}

const LOCK_WAIT_MS = 30_000;

/**
 * Publishing converges on the registry, so a concurrent publisher is waited for, not refused: the
 * tenant change that triggered this run has already committed, and failing now would leave the
 * app's view behind it.
 */
export async function withTenantCatalogLock<T>(dir: InstallDir, fn: () => Promise<T>): Promise<T> {
  const lock = await waitForLock(dir);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

async function waitForLock(dir: InstallDir): Promise<LockHandle> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      return await acquireLock(dir.locksDir, 'tenant-catalog', {command: 'publish the tenant catalog'});
    } catch (err) {
      if (!(err instanceof LockedError) || Date.now() > deadline) {
        throw new UserError(`the tenant change is done, but the app's tenant catalog could not be updated: ${(err as Error).message}`, {
          nextSteps: ["The next tenant change publishes it, whichever tenant it is for; on compose or k8s, dforge install publishes it now (it reconciles the catalog)"],
          cause: err,
        });
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

/** SIGHUP to the running app containers; none running (stack down, no engine) is not an error: they read the files at start. */
async function signalApp(project: string): Promise<number> {
  const [{connectDockerEngine}, {projectContainers}] = await Promise.all([import('../docker/engine.js'), import('./compose-project.js')]);
  const docker = await connectDockerEngine().catch(() => undefined);
  if (!docker) return 0;
  const running = (await projectContainers(docker, project, 'app')).filter((c) => c.State === 'running');
  let signalled = 0;
  for (const c of running) {
    // A container that stopped since it was listed reads the files when it starts again.
    if (await docker.getContainer(c.Id).kill({signal: 'SIGHUP'}).then(() => true, () => false)) signalled++;
  }
  return signalled;
}

/**
 * Runs a tenant change, then republishes the catalog, so the app's view follows every change;
 * `recheck` names the tenants the change touched (see publishTenantCatalog).
 */
export async function changingTenants<T>(plane: ControlPlane, recheck: RecheckScope, change: () => Promise<T>, warn?: (text: string) => void): Promise<T> {
  const result = await change();
  const published = await publishTenantCatalog(plane, recheck);
  if (published.misplaced && warn) {
    warn(`the app catalog leaves out ${published.misplaced.join(', ')}: dforge.yaml now declares their cluster in another region than their pin; put the cluster back under its region in dforge.yaml, or move the tenant (dforge tenant move)`);
  }
  return result;
}
