import {promises as fs} from 'node:fs';
import path from 'node:path';

import pg from 'pg';
import YAML from 'yaml';

import {openControlPlane} from '../../src/control/plane.js';
import {quickstartInstall, type EmbeddedInstall} from './embedded-install.js';
import {freePort} from './pg-cluster.js';

/**
 * A real two-region install, as an operator grows one: `dforge quickstart --region eu` (cluster
 * eu-1, destination eu-local, tenants acme and globex), then dforge.yaml edited to add cluster
 * eu-2 in region eu (EU) and region us (US) with cluster us-1 and destination us-local, then
 * `dforge db init` to start and bootstrap the new clusters. Every cluster is an embedded
 * PostgreSQL from the host binaries on its own port.
 */
export interface MultiRegionInstall extends EmbeddedInstall {
  /** Port of each cluster by name: eu-1, eu-2, us-1. */
  readonly ports: Readonly<Record<string, number>>;
  /** Local destination directories by destination name: eu-local, us-local. */
  readonly destinationDirs: Readonly<Record<string, string>>;
  /** Edits dforge.yaml as a plain object (the operator's editor); the file is rewritten whole. */
  editConfig(edit: (config: Record<string, any>) => void): Promise<void>;
  /** Runs `fn` as a tenant's own role on its own database, on whichever cluster it lives. */
  asTenant<T>(slug: string, fn: (client: pg.Client) => Promise<T>): Promise<T>;
  /** Every database of one cluster, sorted. */
  databasesOn(cluster: string): Promise<string[]>;
}

export interface MultiRegionOptions {
  /** Capacity (maxTenants) per cluster name. */
  readonly capacity?: Readonly<Record<string, number>>;
  /** Replaces us-1's destination list (e.g. an S3 destination from a test server). */
  readonly usDestinations?: ReadonlyArray<Record<string, unknown>>;
}

export async function multiRegionInstall(options: MultiRegionOptions = {}): Promise<MultiRegionInstall> {
  const base = await quickstartInstall({region: 'eu'});
  const ports: Record<string, number> = {'eu-1': base.port, 'eu-2': await freePort(), 'us-1': await freePort()};
  const backupsRoot = path.join(base.dir.root, 'backups');
  const destinationDirs = {'eu-local': path.join(backupsRoot, 'eu'), 'us-local': path.join(backupsRoot, 'us')};
  const editConfig = async (edit: (config: Record<string, any>) => void): Promise<void> => {
    const config = YAML.parse(await fs.readFile(base.dir.configFile, 'utf8')) as Record<string, any>;
    edit(config);
    await fs.writeFile(base.dir.configFile, YAML.stringify(config), {mode: 0o600});
  };
  await editConfig((config) => {
    const capacity = (name: string): Record<string, number> => (options.capacity?.[name] === undefined ? {} : {maxTenants: options.capacity[name]!});
    config.regions.eu.jurisdiction = 'EU';
    config.regions.eu.clusters = [
      {...config.regions.eu.clusters[0], ...capacity('eu-1')},
      {name: 'eu-2', kind: 'embedded', port: ports['eu-2'], ...capacity('eu-2')},
    ];
    config.regions.us = {
      jurisdiction: 'US',
      clusters: [{name: 'us-1', kind: 'embedded', port: ports['us-1'], ...capacity('us-1')}],
      backup: {destinations: options.usDestinations ?? [{name: 'us-local', kind: 'local', path: destinationDirs['us-local']}]},
    };
  });
  const init = await base.cli(['db', 'init', '--json']);
  if (init.code !== 0) throw new Error(`db init of the new clusters failed (${init.code}): ${init.stderr}`);

  const portOfTenant = async (slug: string): Promise<number> => {
    const plane = await openControlPlane(base.dir);
    try {
      return ports[(await plane.tenants.get(slug)).cluster]!;
    } finally {
      await plane.close();
    }
  };
  return {
    ...base,
    ports,
    destinationDirs,
    editConfig,
    async asTenant(slug, fn) {
      const port = await portOfTenant(slug);
      const plane = await openControlPlane(base.dir);
      let password: string;
      try {
        password = await base.tenantPassword(plane, slug);
      } finally {
        await plane.close();
      }
      const db = `tenant_${slug.replaceAll('-', '_')}`;
      const client = new pg.Client(base.clientConfig(db, password, db, {port}));
      await client.connect();
      try {
        return await fn(client);
      } finally {
        await client.end();
      }
    },
    async databasesOn(cluster) {
      const plane = await openControlPlane(base.dir);
      try {
        const c = await plane.provisionerOn(cluster);
        try {
          return (await c.query<{datname: string}>('SELECT datname FROM pg_database ORDER BY 1')).rows.map((r) => r.datname);
        } finally {
          await c.end();
        }
      } finally {
        await plane.close();
      }
    },
    async cleanup() {
      await base.cli(['db', 'stop', '--immediate']);
      await fs.rm(path.dirname(base.dir.root), {recursive: true, force: true});
    },
  };
}
