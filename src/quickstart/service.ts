import {promises as fs} from 'node:fs';

import {parseDocument} from 'yaml';

import {initInstallDir, starterConfig} from '../config/init.js';
import {loadConfigFile} from '../config/load.js';
import type {DforgeConfig} from '../config/schema.js';
import {caCertFile} from '../certs/pki-paths.js';
import {primaryCluster} from '../control/clusters.js';
import {usingControlPlane} from '../control/plane.js';
import {UserError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import {keyAndPkiSteps} from '../install/key-steps.js';
import {embeddedCluster, embeddedClusterNames, setUpEmbeddedCluster, type EmbeddedSetUp} from '../postgres/embedded-install.js';
import {checkEmbeddedSite} from '../preflight/embedded-site.js';
import {loadOptionalConfig} from '../preflight/service.js';
import {changingTenants} from '../runtime/tenant-catalog.js';
import {writeFileAtomic} from '../state/atomic-file.js';
import type {InstallDir} from '../state/install-dir.js';
import {formatBytes} from '../ui/bytes.js';
import type {Step} from '../ui/tasks.js';
import type {Tenant} from '../tenants/registry.js';

/** Flags the operator passed; unset ones come from the kept dforge.yaml, else QUICKSTART_DEFAULTS. */
export interface QuickstartOptions {
  readonly domain?: string;
  readonly port?: number;
  readonly region?: string;
  readonly tenants: readonly string[];
}

export const QUICKSTART_DEFAULTS = {domain: 'dforge.localhost', port: 5432, region: 'local'} as const;

export interface QuickstartResult {
  readonly dir: string;
  readonly configFile: string;
  readonly caFile: string;
  readonly caFingerprint: string;
  readonly postgresMajorVersion: number;
  /** A --port that differed from the kept dforge.yaml and was applied to it (the cluster was stopped). */
  readonly portChanged?: {readonly cluster: string; readonly from: number; readonly to: number};
  readonly clusters: EmbeddedSetUp[];
  readonly tenants: Array<Pick<Tenant, 'slug' | 'region' | 'cluster' | 'database' | 'status'> & {created: boolean}>;
  readonly nextSteps: string[];
}

interface Ctx {
  result: {caFingerprint?: string; postgresMajorVersion?: number; portChanged?: QuickstartResult['portChanged']; clusters: EmbeddedSetUp[]; tenants: QuickstartResult['tenants']};
}

// An evaluation install holds two demo tenants: less than the embedded target's production minimum.
const MIN_FREE_BYTES = 1024 ** 3;

/**
 * What this run will install with: the kept dforge.yaml, or the starter config from the flags.
 * A flag that differs from the kept config is applied when that is safe (a --port while the
 * cluster is stopped: nothing else holds the old port) and refused otherwise, naming both values,
 * so a re-run never silently ignores what the operator just typed.
 */
async function plannedConfig(dir: InstallDir, options: QuickstartOptions): Promise<{config: DforgeConfig; portChange?: NonNullable<QuickstartResult['portChanged']>}> {
  const kept = await loadOptionalConfig(dir);
  if (!kept) {
    const config = starterConfig(dir, {
      domain: options.domain ?? QUICKSTART_DEFAULTS.domain,
      target: 'embedded',
      region: options.region ?? QUICKSTART_DEFAULTS.region,
      port: options.port ?? QUICKSTART_DEFAULTS.port,
      command: 'dforge quickstart',
    });
    return {config};
  }
  if (kept.target !== 'embedded' || embeddedClusterNames(kept).length === 0) {
    throw new UserError(`${dir.configFile} is not an embedded install (target ${kept.target})`, {nextSteps: ['quickstart sets up the embedded data plane only; use dforge install for compose or k8s.']});
  }
  const refuse = (flag: string, given: string, keptValue: string, why: string): never => {
    throw new UserError(`${flag} ${given} conflicts with the kept ${dir.configFile}, which says ${keptValue}; nothing was changed`, {
      nextSteps: [why, `Re-run without ${flag} (or with ${flag} ${keptValue}) to keep the install as it is.`],
      data: {flag, given, kept: keptValue},
    });
  };
  if (options.domain !== undefined && options.domain !== kept.domain) {
    refuse('--domain', options.domain, kept.domain, `The install's certificates were issued for ${kept.domain}; a new domain needs a new install: dforge uninstall --purge, then quickstart again.`);
  }
  if (options.region !== undefined && options.region !== kept.primaryRegion) {
    refuse('--region', options.region, kept.primaryRegion, `Tenants and clusters are placed in region ${kept.primaryRegion}; a new region name needs a new install (dforge uninstall --purge), or add the region to dforge.yaml by hand.`);
  }
  const primary = primaryCluster(kept);
  if (options.port === undefined || primary.kind !== 'embedded' || options.port === primary.port) return {config: kept};
  const pg = embeddedCluster(dir, kept, primary.name);
  if ((await pg.status()).running) {
    refuse('--port', String(options.port), `port ${primary.port} for cluster ${primary.name}`, `Cluster ${primary.name} is running on port ${primary.port}: stop it first (dforge db stop --dir ${dir.root}), then re-run with --port ${options.port} to move it.`);
  }
  const config = structuredClone(kept);
  const cluster = config.regions[config.primaryRegion]!.clusters.find((c) => c.name === primary.name)!;
  if (cluster.kind === 'embedded') cluster.port = options.port;
  return {config, portChange: {cluster: primary.name, from: primary.port, to: options.port}};
}

/** Writes the new port into the kept dforge.yaml, leaving its comments and every other setting as they are. */
async function applyPortChange(dir: InstallDir, config: DforgeConfig, change: NonNullable<QuickstartResult['portChanged']>): Promise<void> {
  const doc = parseDocument(await fs.readFile(dir.configFile, 'utf8'));
  const index = config.regions[config.primaryRegion]!.clusters.findIndex((c) => c.name === change.cluster);
  doc.setIn(['regions', config.primaryRegion, 'clusters', index, 'port'], change.to);
  await writeFileAtomic(dir.configFile, String(doc));
}

/**
 * An evaluation install on this host with no Docker: config, keys, PKI, the embedded data plane,
 * bootstrap, and the demo tenants. Preflight checks everything that could stop it part-way before
 * the first file is written. Every step is idempotent, so running it again changes nothing that
 * exists and finishes anything an interrupted run left.
 */
export function quickstartSteps(dir: InstallDir, options: QuickstartOptions): Array<Step<Ctx>> {
  let planned: DforgeConfig | undefined;
  return [
    {
      title: 'Preflight',
      async run(ctx) {
        const plan = await plannedConfig(dir, options);
        const site = await checkEmbeddedSite(dir, plan.config, {minFreeBytes: MIN_FREE_BYTES});
        planned = plan.config;
        ctx.result.postgresMajorVersion = site.bins.majorVersion;
        if (plan.portChange) ctx.result.portChanged = plan.portChange;
        return `PostgreSQL ${site.bins.majorVersion} at ${site.bins.binDir}, ${formatBytes(site.freeBytes)} free, port${embeddedClusterNames(plan.config).length > 1 ? 's' : ''} free`;
      },
    },
    {
      title: 'Config',
      async run(ctx) {
        const config = planned!;
        const primary = primaryCluster(config);
        const r = await initInstallDir(dir, {
          domain: config.domain,
          target: 'embedded',
          region: config.primaryRegion,
          ...(primary.kind === 'embedded' ? {port: primary.port} : {}),
          command: 'dforge quickstart',
        });
        const change = ctx.result.portChanged;
        if (change) {
          await applyPortChange(dir, config, change);
          return `kept ${r.configFile}, port of ${change.cluster} changed from ${change.from} to ${change.to}`;
        }
        return r.createdConfig ? `wrote ${r.configFile}` : `kept ${r.configFile}`;
      },
    },
    ...keyAndPkiSteps<Ctx>(dir, 'dforge quickstart', (ctx, fingerprint) => (ctx.result.caFingerprint = fingerprint)),
    {
      title: 'Embedded PostgreSQL',
      async run(ctx) {
        const config = await loadConfigFile(dir.configFile);
        const keys = await openKeyServices(dir);
        for (const name of embeddedClusterNames(config)) ctx.result.clusters.push(await setUpEmbeddedCluster(dir, keys, config, name));
        return ctx.result.clusters.map((c) => `${c.cluster} on 127.0.0.1:${c.port}${c.initialised ? ' (new)' : ''}`).join(', ');
      },
    },
    {
      title: 'Tenants',
      async run(ctx) {
        // Published on a re-run too: an install made before embedded installs had a catalog gets one.
        await usingControlPlane(dir, (plane) =>
          changingTenants(plane, 'all', async () => {
            for (const slug of options.tenants) {
              const {tenant, created} = await plane.tenants.create(slug, {ifNotExists: true});
              ctx.result.tenants.push({slug: tenant.slug, region: tenant.region, cluster: tenant.cluster, database: tenant.database, status: tenant.status, created});
            }
          }),
        );
        return ctx.result.tenants.map((t) => `${t.slug}${t.created ? '' : ' (existing)'}`).join(', ');
      },
    },
  ];
}

export function quickstartResult(dir: InstallDir, ctx: Ctx): QuickstartResult {
  const flag = `--dir ${dir.root}`;
  return {
    dir: dir.root,
    configFile: dir.configFile,
    caFile: caCertFile(dir),
    caFingerprint: ctx.result.caFingerprint ?? '',
    postgresMajorVersion: ctx.result.postgresMajorVersion ?? 0,
    ...(ctx.result.portChanged ? {portChanged: ctx.result.portChanged} : {}),
    clusters: ctx.result.clusters,
    tenants: ctx.result.tenants,
    nextSteps: [`dforge tenant list ${flag}`, `dforge tenant credentials acme ${flag}`, `dforge tenant create initech ${flag}`, `dforge keys status ${flag}`, `dforge certs status ${flag}`, `dforge db status ${flag}`],
  };
}

export type QuickstartContext = Ctx;
