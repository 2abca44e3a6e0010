import {serviceHost} from '../certs/service-names.js';
import {PROVISIONER_ROLE} from '../control/bootstrap.js';
import type {ClusterConfig, DforgeConfig} from '../config/schema.js';
import {UserError} from '../errors.js';
import {INITDB_ARGS, INITDB_LOCALE} from '../postgres/embedded-config.js';
import {EMBEDDED_SUPERUSER} from '../postgres/embedded-install.js';

/**
 * The values every template may use, derived from dforge.yaml alone: no secret, no clock, no host
 * fact, so the same config always renders the same bytes.
 */

/** The image services of the stack, as named under `images:` in dforge.yaml. */
export const IMAGE_SERVICES = ['postgres', 'authDb', 'auth', 'app', 'proxy'] as const;
export type ImageService = (typeof IMAGE_SERVICES)[number];

/** Numeric ids the images run as (the official postgres image's 999; an unprivileged id for the dForge services). */
export const POSTGRES_UID = 999;
export const APP_UID = 10_001;
/** The proxy's: nginx's customary unprivileged uid (the nginx-unprivileged images); it listens on 8080 and 8443. */
export const PROXY_UID = 101;

/** POSTGRES_INITDB_ARGS for the images' entrypoints, which split it on spaces. */
export const POSTGRES_INITDB_ARGS = [...INITDB_ARGS, INITDB_LOCALE].join(' ');

/** The role the auth service logs in to auth-db with; its database has the same name (pg_hba sameuser). */
export const AUTH_DB_ROLE = 'dforge_auth';

/** Images not set in dforge.yaml default to dforge/<service>:<release>. */
export function resolvedImages(config: Pick<DforgeConfig, 'images' | 'release'>): Record<ImageService, string> {
  const repo: Record<ImageService, string> = {postgres: 'postgres', authDb: 'postgres', auth: 'auth', app: 'app', proxy: 'proxy'};
  return Object.fromEntries(IMAGE_SERVICES.map((s) => [s, config.images[s] ?? `dforge/${repo[s]}:${config.release}`])) as Record<ImageService, string>;
}

type BundledCluster = Extract<ClusterConfig, {kind: 'bundled'}>;

/** The cluster the stack runs itself (the compose postgres service, the Kubernetes StatefulSet), if any. */
export function findBundledCluster(config: DforgeConfig): BundledCluster | undefined {
  for (const region of Object.values(config.regions)) {
    for (const cluster of region.clusters) if (cluster.kind === 'bundled') return cluster;
  }
  return undefined;
}

/** The bundled cluster, which the compose stack cannot do without. */
export function bundledCluster(config: DforgeConfig): BundledCluster {
  const cluster = findBundledCluster(config);
  if (cluster) return cluster;
  throw new UserError(`target ${config.target} needs a cluster of kind "bundled" in dforge.yaml`, {
    nextSteps: ['Declare the stack\'s own PostgreSQL, e.g. regions.<region>.clusters: [{name: <region>-1, kind: bundled}]'],
  });
}

/**
 * The names the services reach each other by (src/certs/service-names.ts): the names their
 * certificates carry, made resolvable by the compose network aliases or the k8s Services.
 */
export function serviceHosts(config: DforgeConfig, target: 'compose' | 'k8s'): Record<'postgres' | 'authDb' | 'auth' | 'app', string> {
  const host = (service: Parameters<typeof serviceHost>[1]): string => serviceHost(config, service, target);
  return {postgres: host('postgres'), authDb: host('auth-db'), auth: host('auth'), app: host('app')};
}

export function templateValues(config: DforgeConfig): Record<string, unknown> {
  const cluster = bundledCluster(config);
  const httpsPort = config.compose.httpsPort;
  return {
    domain: config.domain,
    release: config.release,
    images: resolvedImages(config),
    compose: config.compose,
    kubernetes: config.kubernetes,
    // Where the HTTP redirect points: the domain, with the port when it is not the default.
    publicAuthority: httpsPort === 443 ? config.domain : `${config.domain}:${httpsPort}`,
    postgres: {cluster: cluster.name, port: cluster.port, superuser: EMBEDDED_SUPERUSER, provisioner: PROVISIONER_ROLE, initdbArgs: POSTGRES_INITDB_ARGS},
    auth: {role: AUTH_DB_ROLE},
    hosts: serviceHosts(config, 'compose'),
    uids: {postgres: `${POSTGRES_UID}:${POSTGRES_UID}`, app: `${APP_UID}:${APP_UID}`},
  };
}
