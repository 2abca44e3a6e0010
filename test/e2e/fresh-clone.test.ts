import {execFile} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {repoRoot} from '../helpers/cli.js';
import {findPgBinaries, freePort} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const run = promisify(execFile);
const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');

/**
 * dforge installed the way an operator installs a tool, not run from a clone: `npm pack` of the
 * built repository, `npm install -g --omit=dev` of that tarball into a throwaway prefix, then the
 * installed `dforge` on PATH: quickstart, a tenant's connection URI, and psql with it as the
 * tenant. Once on the Node that runs the suite (24) and once on Node 22 (the oldest `engines`
 * allows) from the npm `node@22` package. Nothing may come from the repository's node_modules,
 * a build step or the registry once installed. Needs `npm run build` first.
 */
describe.skipIf(!available)('a tarball install on PATH', () => {
  let work: string;
  let tarball: string;

  beforeAll(async () => {
    work = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-pack-'));
    // The postgres account must traverse every install directory below this one.
    await fs.chmod(work, 0o755);
    // --ignore-scripts: `prepare` would rebuild dist/ under the other tests' feet; the suite runs on a built tree.
    const {stdout} = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], {cwd: repoRoot});
    tarball = path.join(work, (JSON.parse(stdout) as [{filename: string}])[0].filename);
  }, 120_000);

  afterAll(async () => {
    if (work) await fs.rm(work, {recursive: true, force: true});
  });

  /** A PATH with only this Node, the system tools and (once installed) the prefix's bin/; no NODE_PATH, no repo. */
  function envFor(nodeBin: string, prefix: string): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = {...process.env, NO_COLOR: '1', PATH: [path.join(prefix, 'bin'), path.dirname(nodeBin), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'].join(':')};
    for (const k of Object.keys(env)) if (k === 'NODE_PATH' || k === 'NODE_OPTIONS' || k.startsWith('npm_') || k === 'INIT_CWD') delete env[k];
    return env;
  }

  async function installAndRun(label: string, nodeBin: string, expectMajor: number): Promise<void> {
    const prefix = path.join(work, `prefix-${label}`);
    const env = envFor(nodeBin, prefix);
    // npm runs on the Node under test (its shebang is `env node`), so `engines` is checked against it.
    await run('npm', ['install', '-g', '--prefix', prefix, '--omit=dev', '--no-audit', '--no-fund', tarball], {env, cwd: work});

    const installed = path.join(prefix, 'lib', 'node_modules', 'dforge');
    const deps = new Set(await fs.readdir(path.join(installed, 'node_modules')));
    for (const dev of ['typescript', 'oclif', 'vitest', 'node', 'esbuild', 'postject']) expect(deps.has(dev), `${dev} installed`).toBe(false);
    expect(await fs.readdir(installed)).not.toContain('src');

    // Once installed, nothing may reach a registry: npm pointed at a closed port, offline.
    const runEnv = {...env, npm_config_registry: 'http://127.0.0.1:9/', npm_config_offline: 'true'};
    const dforge = async (args: string[]): Promise<{stdout: string; stderr: string}> => {
      try {
        return await run('dforge', args, {env: runEnv, cwd: work, timeout: 300_000});
      } catch (e) {
        const err = e as {code?: number; stdout?: string; stderr?: string};
        throw new Error(`dforge ${args.join(' ')} (Node ${expectMajor}) exited ${err.code}: ${err.stderr}${err.stdout}`);
      }
    };

    expect((await dforge(['--version'])).stdout).toContain(`node-v${expectMajor}.`);
    expect((await dforge(['tenant', 'create', '--help'])).stdout).toContain('USAGE');

    const root = path.join(work, `install-${label}`);
    const dir = path.join(root, 'demo');
    await fs.mkdir(root, {mode: 0o755});
    const port = await freePort();
    try {
      const qs = JSON.parse((await dforge(['quickstart', '--dir', dir, '--port', String(port), '--json'])).stdout) as Record<string, unknown>;
      expect(qs).toBeTypeOf('object');
      const {stdout: list, stderr: listErr} = await dforge(['tenant', 'list', '--dir', dir, '--json']);
      // NODE_ENV is "test" here: oclif must not go looking for TypeScript sources the package lacks.
      expect(listErr).not.toMatch(/warning/i);
      expect(list).toContain('acme');
      expect(list).toContain('globex');
      await dforge(['keys', 'status', '--dir', dir, '--json']);
      await dforge(['db', 'status', '--dir', dir, '--json']);

      const uri = (await dforge(['tenant', 'credentials', 'acme', '--uri', '--dir', dir])).stdout.trim();
      expect(uri).toMatch(/^postgresql:\/\//);
      expect(uri).toContain('sslmode=verify-full');
      expect(uri).toContain('sslrootcert=');
      const {stdout: who} = await run('psql', [uri, '-XAtc', 'select current_user'], {env: runEnv, cwd: work});
      expect(who.trim()).toBe('tenant_acme');
    } finally {
      await run('dforge', ['db', 'stop', '--immediate', '--dir', dir], {env: runEnv, cwd: work}).catch(() => undefined);
    }
  }

  it('installs with --omit=dev and runs quickstart, credentials and psql on the Node running the suite', async () => {
    await installAndRun('current', process.execPath, Number(process.versions.node.split('.')[0]));
  }, 600_000);

  it('does the same on Node 22 from the npm node@22 package', async () => {
    const nodePrefix = path.join(work, 'node22');
    await fs.mkdir(nodePrefix);
    // The `node` package fetches its binary in an install script, which npm runs only when allowed.
    await fs.writeFile(path.join(nodePrefix, 'package.json'), JSON.stringify({private: true, allowScripts: {node: true}}));
    await run('npm', ['install', '--prefix', nodePrefix, '--no-audit', '--no-fund', 'node@22'], {cwd: nodePrefix});
    await installAndRun('node22', path.join(nodePrefix, 'node_modules', 'node', 'bin', 'node'), 22);
  }, 600_000);
});
