import {execFile as execFileCb} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {configSchema, type DforgeConfig} from '../../src/config/schema.js';
import {pgToolPath} from '../../src/postgres/binaries.js';
import {renderCompose} from '../../src/render/compose.js';
import {renderKubernetes} from '../../src/render/k8s.js';
import {parseManifests} from '../helpers/k8s-objects.js';
import {hostPostgresBinaries} from '../helpers/requirements.js';

const execFile = promisify(execFileCb);

const bins = hostPostgresBinaries();
const available = bins !== undefined;

const config = (target: 'compose' | 'k8s'): DforgeConfig =>
  configSchema.parse({version: 1, domain: 'dforge.example.com', target, primaryRegion: 'eu', release: '1.4.2', regions: {eu: {clusters: [{name: 'eu-1', kind: 'bundled', port: 15432}]}}});

/**
 * The render tests read the templates as text; here the machine's own server parses them, so a
 * misspelt setting or a value it refuses fails now, not when a container first starts.
 */
describe.skipIf(!available)('the rendered postgresql.conf files pass the PostgreSQL server', () => {
  let dir: string;
  const confs: Record<string, string> = {};

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-pgconf-'));
    await fs.mkdir(path.join(dir, 'data'));
    for (const f of await renderCompose(config('compose'), undefined)) {
      if (f.path.endsWith('postgresql.conf')) confs[`compose ${f.path}`] = f.content;
    }
    for (const f of await renderKubernetes(config('k8s'), undefined)) {
      for (const o of parseManifests(f.content)) {
        const conf = o.kind === 'ConfigMap' ? (o as {data?: Record<string, string>}).data?.['postgresql.conf'] : undefined;
        if (conf !== undefined) confs[`k8s ${o.metadata.name}`] = conf;
      }
    }
  });

  afterAll(async () => {
    if (dir) await fs.rm(dir, {recursive: true, force: true});
  });

  it('compose postgres and auth-db, Kubernetes postgres and auth-db: every line is a setting the server accepts', async () => {
    expect(Object.keys(confs).sort()).toEqual(['compose auth-db/postgresql.conf', 'compose postgres/postgresql.conf', 'k8s auth-db-config', 'k8s postgres-config']);
    for (const [name, conf] of Object.entries(confs)) {
      const file = path.join(dir, 'postgresql.conf');
      await fs.writeFile(file, conf);
      // -C first: the server then reads its configuration and prints one value, even as root, and starts nothing.
      const run = await execFile(pgToolPath(bins!, 'postgres'), ['-C', 'log_line_prefix', '-D', path.join(dir, 'data'), '-c', `config_file=${file}`]).catch((err: {stderr?: string}) => ({stdout: '', stderr: err.stderr ?? String(err)}));
      expect(run.stderr.split('\n').filter((l) => /ERROR|FATAL|unrecognized|invalid/.test(l)), name).toEqual([]);
      expect(run.stdout, name).toBe('%m [%p] %q%u@%d %h app=%a \n');
    }
  });
});
