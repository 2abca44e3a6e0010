import {execFile as execFileCb} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {promisify} from 'node:util';

import {stringify as stringifyYaml} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {compareReleases} from '../../src/install/upgrade.js';
import {runCli, type CliResult} from '../helpers/cli.js';
import {tempInstall} from '../helpers/install-fixture.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {freePort} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';
import {ensureTestImages, type TestImages} from '../helpers/test-images.js';

/**
 * `dforge upgrade` tells the truth, on one compose install on the real engine: a downgrade and an
 * upgrade that would change nothing are refused before any backup or edit; each release is
 * recorded in state/releases.json; --rollback returns dforge.yaml and the running images to the
 * release before, and with --restore-backups --confirm also the tenants' pre-upgrade data.
 */
const execFile = promisify(execFileCb);
const reason = await dockerUnavailableReason();
const available = reason === undefined || missingComponent('Docker', reason);

const DOMAIN = 'dforge.localhost';
const REPO = `dforge-e2e/upgrade-${process.pid}`;
const TAGS = ['0.9.0', '1.0.0', '1.1.0'];

interface History {
  schemaVersion: number;
  entries: Array<{seq: number; action: string; release: string; images: Record<string, {ref: string; id?: string}>; config: string; previous: number | null; backups: Array<{tenant: string; backupId: string}>; replacedConfig?: string; dforgeVersion: string}>;
}

function ok(r: CliResult): CliResult {
  if (r.code !== 0) throw new Error(`exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

describe('release order', () => {
  it('compares releases by semantic-version precedence, prerelease tags included', () => {
    const ordered = ['0.9.0', '1.0.0-alpha', '1.0.0-alpha.1', '1.0.0-alpha.beta', '1.0.0-beta', '1.0.0-beta.2', '1.0.0-beta.11', '1.0.0-rc.1', '1.0.0', '1.1.0', '1.10.0', '2.0.0'];
    for (let i = 0; i < ordered.length; i++) {
      for (let j = 0; j < ordered.length; j++) expect(compareReleases(ordered[i]!, ordered[j]!), `${ordered[i]} vs ${ordered[j]}`).toBe(Math.sign(i - j));
    }
    // Not semver: no order, so the upgrade asks for --allow-downgrade rather than guess.
    expect(compareReleases('latest', '1.0.0')).toBeUndefined();
    expect(compareReleases('1.0', '1.0.0')).toBeUndefined();
    expect(compareReleases('01.0.0', '1.0.0')).toBeUndefined();
  });

  it('an embedded install has no images to move: upgrade and rollback are refused as usage, nothing written', async () => {
    const install = await tempInstall();
    try {
      const before = await fs.readFile(install.configFile, 'utf8');
      for (const args of [['--to', '1.1.0'], ['--rollback']]) {
        const r = await runCli(['upgrade', ...args, '--dir', install.root]);
        expect(r.code, r.stderr).toBe(2);
        expect(r.stderr).toContain('this is an embedded install');
        expect(r.stderr).toContain('dforge db stop');
      }
      expect(await fs.readFile(install.configFile, 'utf8')).toBe(before);
      await expect(fs.access(path.join(install.root, 'state', 'releases.json'))).rejects.toThrow();
    } finally {
      await install.cleanup();
    }
  });
});

describe.skipIf(!available)('dforge upgrade and --rollback on Docker Compose', () => {
  let images: TestImages;
  let root: string;
  let dir: string;
  const ids: Record<string, string> = {};
  const project = `dforge-e2e-up-${process.pid}`;
  const cli = (...args: string[]): Promise<CliResult> => runCli([...args, '--dir', dir]);
  const configFile = (): string => path.join(dir, 'dforge.yaml');
  const readConfig = (): Promise<string> => fs.readFile(configFile(), 'utf8');
  const historyPath = (): string => path.join(dir, 'state', 'releases.json');
  const readHistory = async (): Promise<History> => JSON.parse(await fs.readFile(historyPath(), 'utf8')) as History;
  /** Every backup file written so far: "no backup was taken" compares these. */
  const backupFiles = async (): Promise<string[]> => (await fs.readdir(path.join(root, 'backups'), {recursive: true}).catch(() => [])).sort();
  /** The image id each app/auth container runs. */
  const running = async (): Promise<Record<string, string>> => {
    const docker = await connectDocker();
    const out: Record<string, string> = {};
    for (const c of await docker.listContainers({filters: {label: [`com.docker.compose.project=${project}`]}})) {
      const service = c.Labels['com.docker.compose.service']!;
      if (service === 'app' || service === 'auth') out[service] = c.ImageID;
    }
    return out;
  };

  beforeAll(async () => {
    const docker = await connectDocker();
    images = await ensureTestImages(docker);
    // Three releases of the app/auth stand-in, each a distinct image (a label apart), so "the
    // images it ran" is checked by id, not only by tag.
    for (const tag of TAGS) {
      const container = await docker.createContainer({Image: images.standin, Labels: {}});
      try {
        await container.commit({repo: REPO, tag, changes: [`LABEL dforge.e2e.release=${tag}`]});
      } finally {
        await container.remove();
      }
      ids[tag] = (await docker.getImage(`${REPO}:${tag}`).inspect()).Id;
    }
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-upgrade-'));
    dir = path.join(root, 'install');
    const answers = path.join(root, 'answers.yaml');
    await fs.writeFile(
      answers,
      stringifyYaml({
        target: 'compose',
        domain: DOMAIN,
        region: 'eu',
        httpsPort: await freePort(),
        httpPort: await freePort(),
        postgresPort: await freePort(),
        backupDir: path.join(root, 'backups'),
        project,
        release: '1.0.0',
        images: {postgres: images.postgres, authDb: images.postgres, auth: `${REPO}:1.0.0`, app: `${REPO}:1.0.0`, proxy: images.proxy},
      }),
    );
    ok(await cli('install', '--config', answers, '--yes', '--json'));
    ok(await cli('tenant', 'create', 'acme'));
  }, 900_000);

  afterAll(async () => {
    if (!root) return;
    await runCli(['uninstall', '--purge', '--confirm', DOMAIN, '--dir', dir]).catch(() => undefined);
    await execFile('sh', ['-c', `docker ps -aq --filter label=com.docker.compose.project=${project} | xargs -r docker rm -f; docker volume ls -q --filter label=com.docker.compose.project=${project} | xargs -r docker volume rm; docker network ls -q --filter label=com.docker.compose.project=${project} | xargs -r docker network rm`]).catch(() => undefined);
    await fs.rm(root, {recursive: true, force: true});
    const docker = await connectDocker();
    for (const tag of TAGS) await docker.getImage(`${REPO}:${tag}`).remove().catch(() => undefined);
  }, 300_000);

  it('rollback with no history is refused, naming why, and changes nothing', async () => {
    const before = await readConfig();
    const r = await cli('upgrade', '--rollback');
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('no release history');
    expect(r.stderr).toContain('dforge upgrade --to');
    expect(await readConfig()).toBe(before);
    await expect(fs.access(historyPath())).rejects.toThrow();
  }, 120_000);

  it('a downgrade is refused before any backup or edit, naming both releases', async () => {
    const before = await readConfig();
    const backups = await backupFiles();
    const r = await cli('upgrade', '--to', '0.9.0', '--json');
    expect(r.code).toBe(1);
    const err = (JSON.parse(r.stdout) as {error: {kind: string; message: string; nextSteps: string[]; data: {from: string; to: string}}}).error;
    expect(err).toMatchObject({kind: 'user', data: {from: '1.0.0', to: '0.9.0'}});
    expect(err.message).toMatch(/0\.9\.0 is older than the current release 1\.0\.0.*Nothing was changed/);
    expect(err.nextSteps.join('\n')).toContain('--allow-downgrade');
    // Not semver: refused too, since the order is unknown.
    const odd = await cli('upgrade', '--to', 'latest');
    expect(odd.code).toBe(1);
    expect(odd.stderr).toContain('latest is not a semantic version');
    expect(await readConfig()).toBe(before);
    expect(await backupFiles()).toEqual(backups);
    await expect(fs.access(historyPath())).rejects.toThrow();
  }, 120_000);

  it('an upgrade where no image follows the release is refused, naming the pinned images', async () => {
    const original = await readConfig();
    // app and auth pinned to the stand-in's own tag: now nothing follows the release.
    const pinnedText = original.replaceAll(`${REPO}:1.0.0`, images.standin);
    await fs.writeFile(configFile(), pinnedText);
    try {
      const backups = await backupFiles();
      const r = await cli('upgrade', '--to', '1.1.0');
      expect(r.code).toBe(1);
      expect(r.stderr).toContain('would change nothing');
      expect(r.stderr).toContain(`app=${images.standin}`);
      expect(r.stderr).toContain(`postgres=${images.postgres}`);
      expect(r.stderr).toContain('images.app');
      expect(await readConfig()).toBe(pinnedText);
      expect(await backupFiles()).toEqual(backups);
      await expect(fs.access(historyPath())).rejects.toThrow();
    } finally {
      await fs.writeFile(configFile(), original);
    }
  }, 120_000);

  let original: string;

  it('upgrade records the release it left and the one it reached, with the pre-upgrade backups', async () => {
    original = await readConfig();
    expect(await running()).toEqual({app: ids['1.0.0'], auth: ids['1.0.0']});
    const r = JSON.parse(ok(await cli('upgrade', '--to', '1.1.0', '--json')).stdout) as {upgrade: {from: string; to: string; history: number; backups: number}};
    expect(r.upgrade).toMatchObject({from: '1.0.0', to: '1.1.0', history: 2, backups: 1});
    expect(await running()).toEqual({app: ids['1.1.0'], auth: ids['1.1.0']});
    const history = await readHistory();
    expect(history.schemaVersion).toBe(1);
    expect(history.entries.map((e) => [e.seq, e.action, e.release, e.previous])).toEqual([
      [1, 'baseline', '1.0.0', null],
      [2, 'upgrade', '1.1.0', 1],
    ]);
    const [baseline, upgrade] = history.entries;
    expect(baseline!.images.app).toEqual({ref: `${REPO}:1.0.0`, id: ids['1.0.0']});
    expect(upgrade!.images.auth).toEqual({ref: `${REPO}:1.1.0`, id: ids['1.1.0']});
    expect(upgrade!.images.postgres).toEqual({ref: images.postgres, id: expect.stringMatching(/^sha256:/)});
    expect(upgrade!.backups).toEqual([{tenant: 'acme', backupId: expect.stringContaining('acme')}]);
    expect(upgrade!.dforgeVersion).toMatch(/^\d+\.\d+\.\d+/);
    // Each entry's copy is the dforge.yaml it ran with.
    expect(await fs.readFile(path.join(dir, baseline!.config), 'utf8')).toBe(original);
    expect(await fs.readFile(path.join(dir, upgrade!.config), 'utf8')).toBe(await readConfig());
    expect(await fs.readFile(path.join(dir, 'dforge.yaml.pre-upgrade-1.0.0'), 'utf8')).toBe(original);
    // The ops log has it.
    const log = await cli('audit', 'tail', '--json');
    expect(log.stdout).toContain('"upgrade"');
  }, 600_000);

  it('--rollback returns dforge.yaml and the running images to the release before; once at the first, it is refused', async () => {
    const upgraded = await readConfig();
    const r = JSON.parse(ok(await cli('upgrade', '--rollback', '--json')).stdout) as {rollback: {from: string; to: string; history: number; restored: unknown[]}};
    expect(r.rollback).toEqual({from: '1.1.0', to: '1.0.0', history: 3, restored: []});
    expect(await readConfig()).toBe(original);
    expect(await running()).toEqual({app: ids['1.0.0'], auth: ids['1.0.0']});
    const history = await readHistory();
    expect(history.entries).toHaveLength(3);
    const entry = history.entries[2]!;
    expect(entry).toMatchObject({seq: 3, action: 'rollback', release: '1.0.0', previous: null, backups: []});
    expect(await fs.readFile(path.join(dir, entry.replacedConfig!), 'utf8')).toBe(upgraded);
    // The first release known: nothing before it.
    const again = await cli('upgrade', '--rollback');
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('release 1.0.0 is the first release in the history');
    expect((await readHistory()).entries).toHaveLength(3);
  }, 600_000);

  it('--allow-downgrade proceeds; --rollback --restore-backups needs --confirm (exit 2 off a terminal), then restores the tenants', async () => {
    const r = JSON.parse(ok(await cli('upgrade', '--to', '0.9.0', '--allow-downgrade', '--json')).stdout) as {upgrade: {from: string; to: string; history: number}};
    expect(r.upgrade).toMatchObject({from: '1.0.0', to: '0.9.0', history: 4});
    expect(await running()).toEqual({app: ids['0.9.0'], auth: ids['0.9.0']});
    expect((await readHistory()).entries.at(-1)).toMatchObject({action: 'upgrade', release: '0.9.0', previous: 3});

    const at090 = await readConfig();
    const missing = await cli('upgrade', '--rollback', '--restore-backups');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain(`--confirm ${DOMAIN}`);
    const wrong = await cli('upgrade', '--rollback', '--restore-backups', '--confirm', 'other.example');
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain('does not match');
    expect(await readConfig()).toBe(at090);
    expect((await readHistory()).entries).toHaveLength(4);

    const backupId = (await readHistory()).entries[3]!.backups[0]!.backupId;
    const rb = JSON.parse(ok(await cli('upgrade', '--rollback', '--restore-backups', '--confirm', DOMAIN, '--json')).stdout) as {rollback: {from: string; to: string; restored: Array<{tenant: string; backupId: string; previousDatabase: string | null}>}};
    expect(rb.rollback).toMatchObject({from: '0.9.0', to: '1.0.0'});
    expect(rb.rollback.restored).toEqual([{tenant: 'acme', backupId, database: expect.any(String), previousDatabase: expect.stringContaining('pre_restore')}]);
    expect(await readConfig()).toBe(original);
    expect(await running()).toEqual({app: ids['1.0.0'], auth: ids['1.0.0']});
    expect((await readHistory()).entries.map((e) => `${e.action}:${e.release}`)).toEqual(['baseline:1.0.0', 'upgrade:1.1.0', 'rollback:1.0.0', 'upgrade:0.9.0', 'rollback:1.0.0']);
    const log = (await cli('audit', 'tail', '--json')).stdout;
    expect(log).toContain('upgrade.rollback');
    expect(log).toContain('upgrade --rollback');
  }, 900_000);

  it('a rollback whose images moved is refused before anything changes', async () => {
    // Back at 1.0.0 with its predecessor gone (previous null); upgrade again, then move the 1.0.0 tag.
    ok(await cli('upgrade', '--to', '1.1.0'));
    const docker = await connectDocker();
    await docker.getImage(`${REPO}:0.9.0`).tag({repo: REPO, tag: '1.0.0'});
    try {
      const before = await readConfig();
      const r = await cli('upgrade', '--rollback');
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`${REPO}:1.0.0 now names ${ids['0.9.0']}`);
      expect(r.stderr).toContain('docker tag');
      expect(await readConfig()).toBe(before);
    } finally {
      await docker.getImage(ids['1.0.0']!).tag({repo: REPO, tag: '1.0.0'});
    }
  }, 600_000);
});
