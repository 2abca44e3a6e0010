import {execFile as execFileCb} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {stringify as stringifyYaml} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {repoRoot, runCli, type CliResult} from '../helpers/cli.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {runInLoopbackNamespace, type NamespacedRun} from '../helpers/netns.js';
import {freePort} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';
import {ensureTestImages} from '../helpers/test-images.js';

/**
 * The air-gapped drill, end to end: the release's images are bundled and signed, then removed from
 * the engine; on the "site", the single executable alone (no Node on PATH, no node_modules, no
 * npm) verifies the bundle, installs the compose stack from it, creates a tenant and backs it up,
 * all inside a network namespace that has nothing but loopback. The only way out of it is a
 * bridge to the stack's own published ports.
 */
const execFile = promisify(execFileCb);
const reason = await dockerUnavailableReason();
const executable = path.join(repoRoot, 'dist-sea', 'dforge');
const built = await fs.stat(executable).then(
  () => true,
  () => false,
);
const available = (reason === undefined || missingComponent('Docker', reason)) && (built || missingComponent('the single executable', 'run npm run build:sea'));

const DOMAIN = 'drill.localhost';
const TAG = `drill-${process.pid}`;

function ok(r: CliResult | NamespacedRun): CliResult | NamespacedRun {
  if (r.code !== 0) throw new Error(`exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

describe.skipIf(!available)('offline drill: verify, install, tenant, backup from a bundle with no network', () => {
  let root: string;
  let site: string;
  let bundle: string;
  let pub: string;
  let ports: {https: number; http: number; postgres: number};
  let siteEnv: NodeJS.ProcessEnv;
  const project = `dforge-drill-${process.pid}`;
  const refs = {postgres: `dforge-drill/postgres:${TAG}`, proxy: `dforge-drill/proxy:${TAG}`, standin: `dforge-drill/standin:${TAG}`};
  const offline = (args: string[]): Promise<NamespacedRun> =>
    runInLoopbackNamespace([path.join(site, 'dforge'), ...args], {forward: [ports.https, ports.postgres], env: siteEnv, cwd: site, timeoutMs: 900_000});

  beforeAll(async () => {
    const docker = await connectDocker();
    const images = await ensureTestImages(docker);
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-drill-'));
    // Images of their own (a label makes a new image id on the same layers), so they can be removed.
    for (const [key, from] of [
      ['postgres', images.postgres],
      ['proxy', images.proxy],
      ['standin', images.standin],
    ] as const) {
      await execFile('sh', ['-c', `printf 'FROM %s\\nLABEL dev.dforge.drill=%s\\n' "$0" "$1" | docker build -q -t "$2" -`, from, TAG, refs[key]]);
    }
    await fs.writeFile(path.join(root, 'images.txt'), `${Object.values(refs).join('\n')}\n`);
    ok(await runCli(['bundle', 'keygen', '--out', path.join(root, 'keys')]));
    pub = path.join(root, 'keys', 'bundle-signing.pub');
    bundle = path.join(root, 'dforge-drill.bundle');
    ok(await runCli(['bundle', 'create', '--release', '1.0.0', '--images', path.join(root, 'images.txt'), '--key', path.join(root, 'keys', 'bundle-signing.key'), '--out', bundle]));
    for (const ref of Object.values(refs)) await docker.getImage(ref).remove();

    // The site: the executable copied out of the repository, and a PATH without node or npm.
    site = path.join(root, 'site');
    await fs.mkdir(path.join(site, 'bin'), {recursive: true});
    await fs.copyFile(executable, path.join(site, 'dforge'));
    await fs.chmod(path.join(site, 'dforge'), 0o755);
    for (const name of await fs.readdir('/usr/bin')) {
      if (/^(node|nodejs|npm|npx|corepack)$/.test(name)) continue;
      await fs.symlink(path.join('/usr/bin', name), path.join(site, 'bin', name));
    }
    siteEnv = {PATH: `${path.join(site, 'bin')}:/usr/sbin:/sbin`, HOME: path.join(root, 'home'), LANG: 'C.UTF-8'};
    ports = {https: await freePort(), http: await freePort(), postgres: await freePort()};
  }, 900_000);

  afterAll(async () => {
    if (!root) return;
    await runCli(['uninstall', '--purge', '--confirm', DOMAIN, '--dir', path.join(site, 'install')]).catch(() => undefined);
    await execFile('sh', ['-c', `docker ps -aq --filter label=com.docker.compose.project=${project} | xargs -r docker rm -f; docker volume ls -q --filter label=com.docker.compose.project=${project} | xargs -r docker volume rm; docker network ls -q --filter label=com.docker.compose.project=${project} | xargs -r docker network rm`]).catch(() => undefined);
    const docker = await connectDocker();
    for (const ref of Object.values(refs)) await docker.getImage(ref).remove().catch(() => undefined);
    await fs.rm(root, {recursive: true, force: true});
  }, 300_000);

  it('the site has no node, and its namespace reaches nothing but loopback', async () => {
    const which = await runInLoopbackNamespace(['sh', '-c', 'command -v node npm; ip -o link | cut -d: -f2; ip route'], {env: siteEnv});
    expect(which.stdout.trim()).toBe('lo');
    expect((await fs.readdir(site)).sort()).toEqual(['bin', 'dforge']);
  });

  it('verify → install --bundle → tenant create → backup, offline, from the single executable', async () => {
    const verify = ok(await offline(['bundle', 'verify', bundle, '--trusted-key', pub, '--json']));
    expect(JSON.parse(verify.stdout)).toMatchObject({release: '1.0.0', images: 3});

    const answers = path.join(site, 'answers.yaml');
    await fs.writeFile(
      answers,
      stringifyYaml({
        target: 'compose',
        domain: DOMAIN,
        region: 'eu',
        httpsPort: ports.https,
        httpPort: ports.http,
        postgresPort: ports.postgres,
        backupDir: path.join(site, 'backups'),
        project,
        release: '1.0.0',
        images: {postgres: refs.postgres, authDb: refs.postgres, auth: refs.standin, app: refs.standin, proxy: refs.proxy},
      }),
    );
    const dir = path.join(site, 'install');
    // Inside the namespace the bridge already listens on the stack's ports (it stands in for
    // them), so the port check would find them taken: it is waived, and the waiver is on record.
    const install = ok(await offline(['install', '--bundle', bundle, '--trusted-key', pub, '--config', answers, '--yes', '--ignore', 'host.ports', '--dir', dir, '--json']));
    const result = JSON.parse(install.stdout) as {services: Array<{service: string; health: string}>; bundle: {release: string; loaded: string[]}};
    expect(result.bundle.release).toBe('1.0.0');
    expect(result.bundle.loaded.sort()).toEqual(Object.values(refs).sort());
    expect(result.services.map((s) => `${s.service}:${s.health}`).sort()).toEqual(['app:healthy', 'auth-db:healthy', 'auth:healthy', 'postgres:healthy', 'proxy:healthy']);

    // The engine now has every image under the id the signed bundle names.
    const docker = await connectDocker();
    const manifest = JSON.parse((await execFile('tar', ['-xOf', bundle, 'bundle.json'], {maxBuffer: 64 << 20})).stdout) as {images: Array<{ref: string; config: {digest: string}}>};
    for (const image of manifest.images) expect((await docker.getImage(image.ref).inspect()).Id).toBe(image.config.digest);

    ok(await offline(['tenant', 'create', 'acme', '--dir', dir]));
    const backup = ok(await offline(['backup', '--tenant', 'acme', '--dir', dir, '--json']));
    expect(backup.stdout).toContain('acme');
    const verifyBackups = ok(await offline(['backup', 'verify', '--all', '--deep', '--dir', dir]));
    expect(verifyBackups.code).toBe(0);
  }, 1_200_000);
});
