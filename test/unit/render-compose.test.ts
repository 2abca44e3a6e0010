import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {fileURLToPath} from 'node:url';

import {describe, expect, it} from 'vitest';
import {parse} from 'yaml';

import {type InternalService, internalSubtrees, serviceHost} from '../../src/certs/service-names.js';
import {configSchema, type DforgeConfig} from '../../src/config/schema.js';
import {UserError} from '../../src/errors.js';
import {renderCompose} from '../../src/render/compose.js';
import type {RenderedFile} from '../../src/render/rendered-file.js';
import {caNameConstraints} from '../../src/pki/index.js';
import {namesOutside} from '../../src/pki/names.js';
import {confSettings, HARDENED_SETTINGS} from '../helpers/postgres-hardening.js';

/** Golden files of the fixed config below; regenerate after an intended template change with UPDATE_GOLDEN=1. */
const GOLDEN = fileURLToPath(new URL('../golden/compose/', import.meta.url));

const fixed = (): DforgeConfig =>
  configSchema.parse({
    version: 1,
    domain: 'dforge.example.com',
    target: 'compose',
    primaryRegion: 'eu',
    release: '1.4.2',
    regions: {
      eu: {jurisdiction: 'EU', clusters: [{name: 'eu-1', kind: 'bundled', port: 15432}]},
      us: {jurisdiction: 'US', clusters: [{name: 'us-1', kind: 'external', host: 'pg.us.example.com', admin: {secret: 'postgres/us-1-admin'}}]},
    },
    images: {app: 'registry.example.com/dforge/app:1.4.2'},
    compose: {project: 'dforge', bindAddress: '0.0.0.0', httpPort: 8080, httpsPort: 8443},
  });

/** A config changed after validation, as a hostile or buggy caller could hand it over. */
const hostile = (mutate: (c: DforgeConfig) => DforgeConfig): DforgeConfig => mutate(structuredClone(fixed()));

const composeOf = (files: readonly RenderedFile[]): Record<string, any> => parse(files.find((f) => f.path === 'compose.yaml')!.content);

function keyPaths(value: unknown, prefix = ''): string[] {
  if (Array.isArray(value)) return [`${prefix}[]`, ...value.flatMap((v) => keyPaths(v, `${prefix}[]`))];
  if (value !== null && typeof value === 'object') return Object.entries(value).flatMap(([k, v]) => [`${prefix}.${k}`, ...keyPaths(v, `${prefix}.${k}`)]);
  return [];
}

async function goldenFiles(root: string, prefix = ''): Promise<string[]> {
  const entries = await fs.readdir(path.join(root, prefix), {withFileTypes: true}).catch(() => []);
  const out: string[] = [];
  for (const e of entries) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    out.push(...(e.isDirectory() ? await goldenFiles(root, rel) : [rel]));
  }
  return out.sort();
}

describe('renderCompose', () => {
  it('renders byte-identical output twice', async () => {
    expect(await renderCompose(fixed(), undefined)).toEqual(await renderCompose(fixed(), undefined));
  });

  it('matches the golden files byte for byte', async () => {
    const files = await renderCompose(fixed(), undefined);
    if (process.env.UPDATE_GOLDEN === '1') {
      await fs.rm(GOLDEN, {recursive: true, force: true});
      for (const f of files) {
        await fs.mkdir(path.dirname(path.join(GOLDEN, f.path)), {recursive: true});
        await fs.writeFile(path.join(GOLDEN, f.path), f.content);
      }
    }
    expect(files.map((f) => f.path)).toEqual(await goldenFiles(GOLDEN));
    for (const f of files) expect(f.content, f.path).toBe(await fs.readFile(path.join(GOLDEN, f.path), 'utf8'));
  });

  it('writes TLS 1.3 only, hba sameuser and the HTTPS redirect to the configured authority', async () => {
    const files = await renderCompose(fixed(), undefined);
    const text = (p: string): string => files.find((f) => f.path === p)!.content;
    expect(text('postgres/postgresql.conf')).toContain("ssl_min_protocol_version = 'TLSv1.3'");
    expect(text('postgres/postgresql.conf')).toContain("cluster_name = 'eu-1'");
    expect(text('auth-db/postgresql.conf')).toContain("cluster_name = 'auth-db'");
    expect(text('postgres/pg_hba.conf')).toMatch(/^hostssl\s+sameuser\s+all\s+samenet\s+scram-sha-256$/m);
    expect(text('proxy/nginx.conf')).toMatch(/ssl_protocols TLSv1\.3;/);
    expect(text('proxy/nginx.conf')).toContain('return 301 https://dforge.example.com:8443$request_uri;');
    const compose = composeOf(files);
    expect(compose.services.postgres.ports).toEqual(['127.0.0.1:15432:5432']);
    expect(compose.services.proxy.ports).toEqual(['0.0.0.0:8080:8080', '0.0.0.0:8443:8443']);
    expect(compose.services.app.image).toBe('registry.example.com/dforge/app:1.4.2');
    expect(compose.services.auth.image).toBe('dforge/auth:1.4.2');
  });

  it('hardens postgres and auth-db alike: checksums at initdb, the CIS logging and TLS settings', async () => {
    const files = await renderCompose(fixed(), undefined);
    for (const conf of ['postgres/postgresql.conf', 'auth-db/postgresql.conf']) {
      expect(confSettings(files.find((f) => f.path === conf)!.content), conf).toMatchObject(HARDENED_SETTINGS);
    }
    const compose = composeOf(files);
    for (const service of ['postgres', 'auth-db']) {
      expect(compose.services[service].environment.POSTGRES_INITDB_ARGS.split(' '), service).toEqual(expect.arrayContaining(['--data-checksums', '--auth-local=scram-sha-256', '--auth-host=scram-sha-256']));
    }
  });

  it('lets an override in <dir>/templates/compose/ shadow the packaged file, and relabels only its service', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-compose-override-'));
    try {
      const overrides = path.join(dir, 'templates');
      const packaged = await renderCompose(fixed(), overrides);
      await fs.mkdir(path.join(overrides, 'compose', 'proxy'), {recursive: true});
      await fs.writeFile(path.join(overrides, 'compose', 'proxy', 'nginx.conf'), 'events {}\nhttp { server { server_name {{ domain | nginx }}; } }\n');
      const overridden = await renderCompose(fixed(), overrides);
      expect(overridden.find((f) => f.path === 'proxy/nginx.conf')!.content).toBe('events {}\nhttp { server { server_name dforge.example.com; } }\n');
      const label = (files: RenderedFile[], service: string): string => composeOf(files).services[service].labels['dev.dforge.config-hash'];
      expect(label(overridden, 'proxy')).not.toBe(label(packaged, 'proxy'));
      for (const service of ['postgres', 'auth-db', 'auth', 'app']) expect(label(overridden, service), service).toBe(label(packaged, service));
    } finally {
      await fs.rm(dir, {recursive: true, force: true});
    }
  });

  it('refuses an override placeholder without an escaper', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-compose-override-'));
    try {
      await fs.mkdir(path.join(dir, 'compose', 'proxy'), {recursive: true});
      await fs.writeFile(path.join(dir, 'compose', 'proxy', 'nginx.conf'), 'server_name {{ domain }};\n');
      await expect(renderCompose(fixed(), dir)).rejects.toThrow(/needs an escaper/);
    } finally {
      await fs.rm(dir, {recursive: true, force: true});
    }
  });
});

describe('renderCompose with hostile values (zod bypassed)', () => {
  it('refuses a domain the nginx configuration cannot hold, naming the value but not echoing it', async () => {
    for (const domain of ['evil.com;\n  include /etc/shadow', 'evil.com $host', 'a{b}']) {
      const err = await renderCompose(hostile((c) => ({...c, domain})), undefined).catch((e: unknown) => e);
      expect(err, domain).toBeInstanceOf(UserError);
      expect((err as Error).message).toMatch(/the value of domain cannot be written into .*proxy\/nginx\.conf/);
      expect((err as Error).message).not.toContain('shadow');
    }
  });

  it('refuses a cluster name that would break out of postgresql.conf, and quotes one that cannot', async () => {
    const named = (name: string): DforgeConfig =>
      hostile((c) => ({...c, regions: {eu: {clusters: [{name, kind: 'bundled', port: 15432}]}}}));
    await expect(renderCompose(named("eu'\nssl = off"), undefined)).rejects.toThrow(/postgres\.cluster cannot be written into .*postgresql\.conf/);
    const quoted = await renderCompose(named("eu'; ssl = off; x='"), undefined);
    const conf = quoted.find((f) => f.path === 'postgres/postgresql.conf')!.content;
    expect(conf).toContain("cluster_name = 'eu''; ssl = off; x='''\n");
    expect(conf.match(/^ssl = /gm)).toEqual(['ssl = ']);
  });

  it('keeps an injected image, port or bind address one inert string in compose.yaml', async () => {
    const image = 'x"\n    privileged: true\n    network_mode: host #';
    const evil = hostile((c) => ({
      ...c,
      images: {...c.images, app: image},
      compose: {...c.compose, bindAddress: '0.0.0.0"\n    privileged: true', httpPort: '80:80"\n  cap_add: [ALL]' as unknown as number},
      regions: {eu: {clusters: [{name: 'eu-1', kind: 'bundled', port: '5432\n    privileged: true' as unknown as number}]}},
    }));
    const normal = composeOf(await renderCompose(fixed(), undefined));
    const injected = composeOf(await renderCompose(evil, undefined));
    expect(keyPaths(injected)).toEqual(keyPaths(normal));
    expect(injected.services.app.image).toBe(image);
    expect(injected.services.proxy.ports[0]).toBe('0.0.0.0"\n    privileged: true:80:80"\n  cap_add: [ALL]:8080');
    expect(injected.services.postgres.ports[0]).toBe('127.0.0.1:5432\n    privileged: true:5432');
    for (const service of Object.values(injected.services) as Array<Record<string, unknown>>) {
      expect(service.privileged).toBeUndefined();
      expect(service.network_mode).toBeUndefined();
    }
  });

  it('refuses an HTTPS port that would reach the redirect in nginx.conf', async () => {
    const evil = hostile((c) => ({...c, compose: {...c.compose, httpsPort: '443$request_uri; include /x' as unknown as number}}));
    await expect(renderCompose(evil, undefined)).rejects.toThrow(/the value of publicAuthority cannot be written into .*nginx\.conf/);
  });
});

describe('service names in the compose stack', () => {
  it('every name a client connects by is an alias of its service on a network they share, and one the install CA may certify', async () => {
    const config = fixed();
    const files = await renderCompose(config, undefined);
    const services = composeOf(files).services as Record<string, {environment?: Record<string, string>; networks: string[] | Record<string, {aliases?: string[]} | null>}>;
    const networksOf = (service: string): string[] => {
      const n = services[service]!.networks;
      return Array.isArray(n) ? n : Object.keys(n);
    };
    const nginx = files.find((f) => f.path === 'proxy/nginx.conf')!.content;
    const uses: Array<[client: string, url: string, service: InternalService]> = [
      ['auth', services.auth!.environment!.DFORGE_AUTH_DB_URL!, 'auth-db'],
      ['app', services.app!.environment!.DFORGE_AUTH_URL!, 'auth'],
      // The tenant catalog (src/runtime/tenant-catalog.ts) gives the app this host for the bundled cluster.
      ['app', `postgresql://tenant_a@${serviceHost(config, 'postgres')}:5432/tenant_a`, 'postgres'],
      ...[...nginx.matchAll(/set \$(\w+)_upstream (http:\/\/\S+);/g)].map((m): [string, string, InternalService] => ['proxy', m[2]!, m[1] as InternalService]),
    ];
    expect(uses.map(([client, , service]) => `${client}->${service}`).sort()).toEqual(['app->auth', 'app->postgres', 'auth->auth-db', 'proxy->app', 'proxy->auth']);
    const constraints = caNameConstraints({domain: config.domain, internalNames: internalSubtrees(config)});
    for (const [client, url, service] of uses) {
      const host = new URL(url).hostname;
      expect(host, url).toBe(`${service}.dforge.internal`);
      const shared = Object.entries(services[service]!.networks).filter(([net, def]) => def?.aliases?.includes(host) && networksOf(client).includes(net));
      expect(shared.length, `${client} reaches ${host}`).toBe(1);
      expect(namesOutside(constraints, {dns: [host], ip: []}), host).toEqual([]);
    }
    // No bare service name is left for a client to use, and none would be certifiable.
    expect(namesOutside(constraints, {dns: ['postgres', 'auth', 'app', 'auth-db'], ip: []})).toEqual(['postgres', 'auth', 'app', 'auth-db']);
  });
});
