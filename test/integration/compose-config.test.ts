import {execFile} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';
import {parse} from 'yaml';

import {configSchema} from '../../src/config/schema.js';
import {renderCompose} from '../../src/render/compose.js';
import {writeRendered} from '../../src/render/rendered-file.js';
import {missingComponent} from '../helpers/requirements.js';

/**
 * The rendered compose.yaml, read by the real Compose (DESIGN §6: `docker compose` v2, else
 * `docker-compose` v1): its schema check refuses unknown keys and malformed ports, volumes or
 * secrets. `config` needs no engine.
 */
const run = promisify(execFile);

async function composeCommand(): Promise<string[] | undefined> {
  for (const command of [['docker', 'compose'], ['docker-compose']]) {
    try {
      await run(command[0]!, [...command.slice(1), 'version'], {timeout: 30_000});
      return command;
    } catch {
      // Try the next one.
    }
  }
  return undefined;
}

const compose = await composeCommand();
if (!compose) missingComponent('docker compose', 'neither `docker compose` (v2) nor docker-compose (v1) runs; install the Debian package docker-compose');

/** The runtime/ files install writes and compose.yaml names as secrets (dummies: `config` reads none of them). */
const RUNTIME_FILES = [
  'ca.crt',
  'auth/jwks.json',
  'postgres/superuser.password',
  'postgres/server.crt',
  'postgres/server.key',
  'auth-db/superuser.password',
  'auth/db.password',
  'auth/jwt-signing-key.pem',
  'proxy/tls.crt',
  'proxy/tls.key',
];
const RUNTIME_DIRS = ['postgres/socket', 'auth-db/socket', 'tenants'];

interface ResolvedService {
  image: string;
  user?: string;
  ports?: Array<string | {target: number; published: number | string}>;
  networks: Record<string, unknown> | string[];
  cap_add?: string[];
  cap_drop?: string[];
  security_opt?: string[];
  mem_limit?: number | string;
  cpus?: number | string;
  pids_limit?: number;
  tmpfs?: string[];
  logging?: {driver: string; options: Record<string, string>};
}
interface Resolved {
  services: Record<string, ResolvedService>;
  networks: Record<string, {internal?: boolean; driver_opts?: Record<string, string>}>;
  secrets: Record<string, {file: string}>;
}

describe.skipIf(!compose)('docker compose config accepts the rendered compose.yaml', () => {
  let root: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-compose-config-'));
  });
  afterAll(async () => {
    await fs.rm(root, {recursive: true, force: true});
  });

  /** Renders an install layout (rendered/compose next to runtime/, which compose.yaml reaches as ../../runtime) and returns what Compose resolves. */
  async function resolve(extra: Record<string, unknown>): Promise<Resolved> {
    const config = configSchema.parse({
      version: 1,
      domain: 'dforge.example.com',
      target: 'compose',
      primaryRegion: 'eu',
      release: '1.4.2',
      regions: {eu: {clusters: [{name: 'eu-1', kind: 'bundled'}]}},
      ...extra,
    });
    const out = path.join(root, 'rendered', 'compose');
    await fs.rm(out, {recursive: true, force: true});
    await writeRendered(out, await renderCompose(config, undefined));
    for (const dir of RUNTIME_DIRS) await fs.mkdir(path.join(root, 'runtime', dir), {recursive: true});
    for (const file of RUNTIME_FILES) {
      await fs.mkdir(path.dirname(path.join(root, 'runtime', file)), {recursive: true});
      await fs.writeFile(path.join(root, 'runtime', file), 'dummy\n', {mode: 0o600});
    }
    const [binary, ...args] = compose!;
    const {stdout} = await run(binary!, [...args, '-f', path.join(out, 'compose.yaml'), '--project-name', config.compose.project, 'config'], {cwd: out, timeout: 60_000});
    return parse(stdout) as Resolved;
  }

  it('resolves every service, volume and secret of the install layout', async () => {
    const resolved = await resolve({});
    expect(Object.keys(resolved.services).sort()).toEqual(['app', 'auth', 'auth-db', 'postgres', 'proxy']);
    expect(resolved.services.app!.image).toBe('dforge/app:1.4.2');
    // Every secret resolves to a file of the runtime/ directory that install fills.
    for (const [name, secret] of Object.entries(resolved.secrets)) {
      expect(path.relative(path.join(root, 'runtime'), secret.file).startsWith('..'), name).toBe(false);
      await expect(fs.access(secret.file), `${name}: ${secret.file}`).resolves.toBeUndefined();
    }
  });

  it('hardens every service: non-root, no capabilities, limits from the minimum host, rotated logs, sized tmpfs', async () => {
    const resolved = await resolve({});
    const networksOf = (s: ResolvedService): string[] => (Array.isArray(s.networks) ? s.networks : Object.keys(s.networks)).sort();
    for (const [name, s] of Object.entries(resolved.services)) {
      expect(s.user, name).toMatch(/^[1-9][0-9]*:[1-9][0-9]*$/);
      expect(s.cap_add, name).toBeUndefined();
      expect(s.cap_drop, name).toEqual(['ALL']);
      expect(s.security_opt, name).toEqual(['no-new-privileges:true']);
      expect(Number(s.pids_limit), name).toBeGreaterThan(0);
      expect(Number(s.cpus), name).toBeGreaterThan(0);
      expect(s.mem_limit, name).toBeDefined();
      expect(s.logging, name).toEqual({driver: 'json-file', options: {'max-size': '10m', 'max-file': '5'}});
      for (const t of s.tmpfs ?? []) expect(t, name).toMatch(/:size=\d+m,/);
    }
    // The whole stack fits the smallest host preflight accepts for compose (4 GiB), with room left.
    const total = Object.values(resolved.services).reduce((sum, s) => sum + Number(s.mem_limit), 0);
    expect(total).toBe(3 * 1024 ** 3);
    expect(resolved.services.proxy!.user).toBe('101:101');
    // Compose v1 writes "host:published:target/tcp", v2 an object: either way the targets are 8080 and 8443.
    expect(resolved.services.proxy!.ports!.map((p) => (typeof p === 'string' ? /:(\d+)(\/tcp)?$/.exec(p)![1] : String(p.target)))).toEqual(['8080', '8443']);
    // Only the proxy is on a network with a route out; postgres's extra one has no NAT and no traffic between its members.
    const routed = Object.entries(resolved.networks).filter(([, n]) => n.internal !== true).map(([name]) => name).sort();
    expect(routed).toEqual(['postgres-host', 'public']);
    expect(resolved.networks['postgres-host']!.driver_opts).toEqual({'com.docker.network.bridge.enable_ip_masquerade': 'false', 'com.docker.network.bridge.enable_icc': 'false'});
    expect(Object.fromEntries(Object.entries(resolved.services).map(([name, s]) => [name, networksOf(s)]))).toEqual({
      proxy: ['edge-app', 'edge-auth', 'public'],
      app: ['app-auth', 'data', 'edge-app'],
      auth: ['app-auth', 'auth', 'edge-auth'],
      postgres: ['data', 'postgres-host'],
      'auth-db': ['auth'],
    });
  });

  it('takes compose.limits from dforge.yaml over the defaults, service by service', async () => {
    const resolved = await resolve({compose: {limits: {postgres: {memory: '6g', cpus: 3, pids: 1000}, proxy: {memory: '128m'}}}});
    expect([resolved.services.postgres!.mem_limit, Number(resolved.services.postgres!.cpus), resolved.services.postgres!.pids_limit].map(String)).toEqual([String(6 * 1024 ** 3), '3', '1000']);
    expect(String(resolved.services.proxy!.mem_limit)).toBe(String(128 * 1024 ** 2));
    // What is not overridden keeps its default.
    expect(Number(resolved.services.proxy!.cpus)).toBe(0.5);
    expect(() => configSchema.parse({version: 1, domain: 'd.example.com', target: 'compose', primaryRegion: 'eu', release: '1', regions: {eu: {clusters: [{name: 'eu-1', kind: 'bundled'}]}}, compose: {limits: {proxy: {memory: '1tb'}}}})).toThrow(/512m or 2g/);
  });
});
