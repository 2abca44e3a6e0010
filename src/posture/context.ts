import type {Client} from 'pg';

import type {DforgeConfig} from '../config/schema.js';
import type {ControlPlane} from '../control/plane.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Tenant} from '../tenants/registry.js';
import {connectTenantSession} from '../tenants/tenant-session.js';
import type {CheckResult} from './check.js';

export type PosturePolicy = DforgeConfig['policy'];

/**
 * What every probe gets: the install, its live control plane (or why it could not be opened), the
 * tenants in scope, a clock, and one concurrency limit shared by every probe, so a posture run over
 * a hundred tenants opens a bounded number of connections and handshakes at a time.
 */
export interface PostureContext {
  readonly dir: InstallDir;
  readonly config: DforgeConfig;
  readonly clock: () => Date;
  /** Runs `fn` when a slot is free; every connection, handshake or file scan goes through it. */
  readonly limit: <T>(fn: () => Promise<T>) => Promise<T>;
  /** The open control plane; undefined when dforge_control could not be reached (see planeError). */
  readonly plane: ControlPlane | undefined;
  readonly planeError: string | undefined;
  /** Tenants in scope: every tenant, or the one `--tenant` names. */
  readonly tenants: readonly Tenant[];
  /** Every tenant of the install, whatever the scope: probes that need a neighbour look here. */
  readonly allTenants: readonly Tenant[];
  /** The slug `--tenant` named, when the run is about one tenant. */
  readonly onlyTenant?: string;
}

/** A probe: measures its checks live and returns one result per check and scope. */
export type Probe = (ctx: PostureContext) => Promise<CheckResult[]>;

/** The control plane, or an error saying why there is none (the check becomes ERROR). */
export function requirePlane(ctx: PostureContext): ControlPlane {
  if (!ctx.plane) throw new Error(`dforge_control could not be reached: ${ctx.planeError ?? 'unknown cause'}`);
  return ctx.plane;
}

const controlQueues = new WeakMap<PostureContext, Promise<unknown>>();

/**
 * Runs `fn` when no other probe is using the control plane's one dforge_control session:
 * pg queues overlapping queries on a client today but has deprecated it (pg@9 drops it), and
 * the probes run their tenants in parallel. `fn` must not wait for ctx.limit: a slot holder may be
 * waiting in this queue (ctx.limit(() => onControl(…)) is the one safe nesting).
 */
export function onControl<T>(ctx: PostureContext, fn: (plane: ControlPlane) => Promise<T>): Promise<T> {
  // Rejects rather than throws, so a probe's other checks still run when there is no plane.
  const run = (controlQueues.get(ctx) ?? Promise.resolve()).then(() => fn(requirePlane(ctx)));
  controlQueues.set(ctx, run.catch(() => undefined));
  return run;
}

/**
 * A session as the tenant's own login role; see connectTenantSession for what that buys. The
 * password lookup goes through the control queue like every other use of dforge_control.
 */
export async function connectAsTenant(ctx: PostureContext, tenant: Tenant, database: string = tenant.database): Promise<Client> {
  const password = (slug: string): Promise<string> => onControl(ctx, (plane) => plane.tenants.password(slug));
  return connectTenantSession(ctx.dir, ctx.config, {password}, tenant, database);
}

/** Opens a client, runs `fn`, always ends the client. */
export async function usingClient<T>(open: () => Promise<Client>, fn: (c: Client) => Promise<T>): Promise<T> {
  const client = await open();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

export interface PostureContextOptions {
  /** Only this tenant's checks (install-wide checks still run). */
  readonly tenant?: string;
  readonly clock?: () => Date;
  /** How many connections/handshakes at once. */
  readonly concurrency?: number;
}

/** Default bound on parallel probes: enough to hide network latency, far below max_connections. */
export const DEFAULT_POSTURE_CONCURRENCY = 8;

/**
 * Opens what a posture run needs. An unreachable control database is not an error here: the run
 * goes on, and every check that needs it reports ERROR with the reason.
 */
export async function openPostureContext(dir: InstallDir, options: PostureContextOptions = {}): Promise<PostureContext> {
  const [{loadConfigFile}, {openControlPlane}, {default: pLimit}] = await Promise.all([import('../config/load.js'), import('../control/plane.js'), import('p-limit')]);
  const config = await loadConfigFile(dir.configFile);
  const clock = options.clock ?? (() => new Date());
  let plane: ControlPlane | undefined;
  let planeError: string | undefined;
  let tenants: Tenant[] = [];
  let allTenants: Tenant[] = [];
  try {
    plane = await openControlPlane(dir, {clock});
    // A cluster that goes away mid-run makes the idle session emit 'error'; unhandled, that would
    // kill the process instead of turning the checks that need it into ERROR.
    plane.control.on('error', () => undefined);
  } catch (err) {
    planeError = err instanceof Error ? err.message : String(err);
  }
  if (plane) {
    // A named tenant that does not exist is the operator's mistake, not an unreachable database.
    if (options.tenant) {
      try {
        await plane.tenants.get(options.tenant);
      } catch (err) {
        await plane.close();
        throw err;
      }
    }
    try {
      allTenants = await plane.tenants.list();
      tenants = options.tenant ? allTenants.filter((t) => t.slug === options.tenant) : allTenants;
    } catch (err) {
      // Without the tenant list every per-tenant check would silently vanish and the rest could be
      // green: no plane, so everything that needs one is ERROR.
      await plane.close();
      plane = undefined;
      planeError = `the tenants could not be listed: ${err instanceof Error ? err.message : String(err)}`;
    }
  }
  return {dir, config, clock, limit: pLimit(options.concurrency ?? DEFAULT_POSTURE_CONCURRENCY), plane, planeError, tenants, allTenants, onlyTenant: options.tenant};
}
