import {promises as fs} from 'node:fs';

import {initInstallDir} from '../config/init.js';
import {loadConfigFile} from '../config/load.js';
import {caCertFile, usingControlPlane} from '../control/plane.js';
import {UserError} from '../errors.js';
import {openKeyServices} from '../keys/context.js';
import {keyAndPkiSteps} from '../install/key-steps.js';
import {findPostgresBinaries} from '../postgres/binaries.js';
import {changingTenants} from '../runtime/tenant-catalog.js';
import {embeddedClusterNames, setUpEmbeddedCluster, type EmbeddedSetUp} from '../postgres/embedded-install.js';
import type {InstallDir} from '../state/install-dir.js';
import type {Step} from '../ui/tasks.js';
import type {Tenant} from '../tenants/service.js';

export interface QuickstartOptions {
  readonly domain: string;
  readonly port: number;
  readonly region: string;
  readonly tenants: readonly string[];
}

export interface QuickstartResult {
  readonly dir: string;
  readonly configFile: string;
  readonly caFile: string;
  readonly caFingerprint: string;
  readonly postgresMajorVersion: number;
  readonly clusters: EmbeddedSetUp[];
  readonly tenants: Array<Pick<Tenant, 'slug' | 'region' | 'cluster' | 'database' | 'status'> & {created: boolean}>;
  readonly nextSteps: string[];
}

interface Ctx {
  result: {caFingerprint?: string; postgresMajorVersion?: number; clusters: EmbeddedSetUp[]; tenants: QuickstartResult['tenants']};
}

const MIN_FREE_BYTES = 1024 ** 3;

/**
 * An evaluation install on this host with no Docker: config, keys, PKI, the embedded data plane,
 * bootstrap, and the demo tenants. Every step is idempotent, so running it again changes nothing
 * that exists and finishes anything an interrupted run left.
 */
export function quickstartSteps(dir: InstallDir, options: QuickstartOptions): Array<Step<Ctx>> {
  return [
    {
      title: 'Preflight',
      async run(ctx) {
        const bins = findPostgresBinaries();
        ctx.result.postgresMajorVersion = bins.majorVersion;
        await fs.mkdir(dir.root, {recursive: true, mode: 0o755});
        const stat = await fs.statfs(dir.root);
        const free = stat.bavail * stat.bsize;
        if (free < MIN_FREE_BYTES) {
          throw new UserError(`only ${(free / 1024 ** 2).toFixed(0)} MiB free at ${dir.root}; the evaluation install needs 1 GiB`, {
            nextSteps: ['Free space there, or pass --dir on a larger file system.'],
          });
        }
        return `PostgreSQL ${bins.majorVersion} at ${bins.binDir}, ${(free / 1024 ** 3).toFixed(1)} GiB free`;
      },
    },
    {
      title: 'Config',
      async run() {
        const r = await initInstallDir(dir, {domain: options.domain, target: 'embedded', region: options.region, port: options.port, command: 'dforge quickstart'});
        const config = await loadConfigFile(dir.configFile);
        if (config.target !== 'embedded' || embeddedClusterNames(config).length === 0) {
          throw new UserError(`${dir.configFile} is not an embedded install (target ${config.target})`, {nextSteps: ['quickstart sets up the embedded data plane only; use dforge install for compose or k8s.']});
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
          changingTenants(plane, async () => {
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
    clusters: ctx.result.clusters,
    tenants: ctx.result.tenants,
    nextSteps: [`dforge tenant list ${flag}`, `dforge tenant create initech ${flag}`, `dforge keys status ${flag}`, `dforge certs status ${flag}`, `dforge db status ${flag}`],
  };
}

export type QuickstartContext = Ctx;
