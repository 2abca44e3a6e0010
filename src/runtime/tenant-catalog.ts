import {promises as fs} from 'node:fs';
import path from 'node:path';

import {clustersOf, type ControlPlane} from '../control/plane.js';
import {byCodePoint} from '../render/rendered-file.js';
import {APP_UID} from '../render/values.js';
import {LockedError, UserError} from '../errors.js';
import {acquireLock, type LockHandle} from '../state/lock.js';
import type {InstallDir} from '../state/install-dir.js';
import {ensureRuntimeDir, writeRuntimeFile} from './runtime-files.js';

/**
 * How the app learns of tenants, with no shared connection: runtime/tenants/ holds a catalog and
 * one password file per active tenant, owned by the app's user, mounted read-only into the app
 * at /run/dforge/tenants. Nothing goes through environment variables. After a change the app is
 * sent SIGHUP to re-read it.
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
  readonly status: 'active' | 'suspended';
}

export interface CatalogPublication {
  readonly skipped?: string;
  readonly tenants: number;
  readonly changed: boolean;
  /** App containers sent SIGHUP. */
  readonly signalled: number;
}

export const tenantsRuntimeDir = (dir: InstallDir): string => path.join(dir.runtimeDir, 'tenants');

const APP = {uid: APP_UID, gid: APP_UID};

/** Rewrites runtime/tenants/ from the registry and signals the app when anything changed. */
export async function publishTenantCatalog(plane: ControlPlane): Promise<CatalogPublication> {
  if (plane.config.target !== 'compose') return {skipped: `target ${plane.config.target} has no compose runtime`, tenants: 0, changed: false, signalled: 0};
  const dir = plane.keys.dir;
  const lock = await waitForLock(dir);
  try {
    const target = tenantsRuntimeDir(dir);
    await ensureRuntimeDir(target, {mode: 0o700, owner: APP});
    const clusters = clustersOf(plane.config);
    const entries: CatalogEntry[] = [];
    let changed = false;
    const keep = new Set<string>(['catalog.json']);
    for (const tenant of await plane.tenants.list()) {
      if (tenant.status !== 'active' && tenant.status !== 'suspended') continue;
      const cluster = clusters.get(tenant.cluster)?.cluster;
      if (!cluster || cluster.kind === 'embedded') continue;
      // Inside the stack the bundled cluster is the postgres service; external clusters by their own name.
      const [host, port] = cluster.kind === 'bundled' ? ['postgres', 5432] : [cluster.host, cluster.port];
      let passwordFile: string | undefined;
      if (tenant.status === 'active') {
        const file = `${tenant.slug}.password`;
        keep.add(file);
        changed = (await writeRuntimeFile(path.join(target, file), await plane.tenants.password(tenant.slug), {mode: 0o400, owner: APP})) || changed;
        passwordFile = `${CATALOG_MOUNT}/${file}`;
      }
      entries.push({slug: tenant.slug, database: tenant.database, role: tenant.role, host, port, sslmode: 'verify-full', ...(passwordFile ? {passwordFile} : {}), status: tenant.status});
    }
    entries.sort((a, b) => byCodePoint(a.slug, b.slug));
    changed = (await writeRuntimeFile(path.join(target, 'catalog.json'), `${JSON.stringify({version: 1, tenants: entries}, null, 2)}\n`, {mode: 0o400, owner: APP})) || changed;
    // A deleted or suspended tenant's password leaves the app's view too.
    for (const name of await fs.readdir(target)) {
      if (!keep.has(name)) {
        await fs.rm(path.join(target, name), {force: true});
        changed = true;
      }
    }
    const signalled = changed ? await signalApp(plane.config.compose.project) : 0;
    return {tenants: entries.length, changed, signalled};
  } finally {
    await lock.release();
  }
}

const LOCK_WAIT_MS = 30_000;

/**
 * Publishing converges on the registry, so a concurrent publisher is waited for, not refused: the
 * tenant change that triggered this run has already committed, and failing now would leave the
 * app's view behind it.
 */
async function waitForLock(dir: InstallDir): Promise<LockHandle> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (;;) {
    try {
      return await acquireLock(dir.locksDir, 'tenant-catalog', {command: 'publish the tenant catalog'});
    } catch (err) {
      if (!(err instanceof LockedError) || Date.now() > deadline) {
        throw new UserError(`the tenant change is done, but the app's tenant catalog could not be updated: ${(err as Error).message}`, {
          nextSteps: ['Publish it again with: dforge install (it reconciles the catalog)'],
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

/** Runs a tenant change, then republishes the catalog, so the app's view follows every change. */
export async function changingTenants<T>(plane: ControlPlane, change: () => Promise<T>): Promise<T> {
  const result = await change();
  await publishTenantCatalog(plane);
  return result;
}
