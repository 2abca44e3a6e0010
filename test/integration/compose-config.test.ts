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

describe.skipIf(!compose)('docker compose config accepts the rendered compose.yaml', () => {
  let root: string;
  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-compose-config-'));
  });
  afterAll(async () => {
    await fs.rm(root, {recursive: true, force: true});
  });

  it('resolves every service, volume and secret of the install layout', async () => {
    const config = configSchema.parse({
      version: 1,
      domain: 'dforge.example.com',
      target: 'compose',
      primaryRegion: 'eu',
      release: '1.4.2',
      regions: {eu: {clusters: [{name: 'eu-1', kind: 'bundled'}]}},
    });
    // The install directory's layout: rendered/compose next to runtime/, which compose.yaml reaches as ../../runtime.
    const out = path.join(root, 'rendered', 'compose');
    await writeRendered(out, await renderCompose(config, undefined));
    for (const dir of RUNTIME_DIRS) await fs.mkdir(path.join(root, 'runtime', dir), {recursive: true});
    for (const file of RUNTIME_FILES) {
      await fs.mkdir(path.dirname(path.join(root, 'runtime', file)), {recursive: true});
      await fs.writeFile(path.join(root, 'runtime', file), 'dummy\n', {mode: 0o600});
    }

    const [binary, ...args] = compose!;
    const {stdout} = await run(binary!, [...args, '-f', path.join(out, 'compose.yaml'), '--project-name', config.compose.project, 'config'], {cwd: out, timeout: 60_000});
    const resolved = parse(stdout) as {services: Record<string, {image: string}>; secrets: Record<string, {file: string}>};
    expect(Object.keys(resolved.services).sort()).toEqual(['app', 'auth', 'auth-db', 'postgres', 'proxy']);
    expect(resolved.services.app!.image).toBe('dforge/app:1.4.2');
    // Every secret resolves to a file of the runtime/ directory that install fills.
    for (const [name, secret] of Object.entries(resolved.secrets)) {
      expect(path.relative(path.join(root, 'runtime'), secret.file).startsWith('..'), name).toBe(false);
      await expect(fs.access(secret.file), `${name}: ${secret.file}`).resolves.toBeUndefined();
    }
  });
});
