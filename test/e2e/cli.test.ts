import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {HELP_CACHE_FILE, type HelpCache} from '../../src/cli/fast-path.js';
import {repoRoot, runCli} from '../helpers/cli.js';

let root: string;
beforeAll(async () => {
  root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-cli-'));
});
afterAll(async () => {
  await fs.rm(root, {recursive: true, force: true});
});

const HEAVY = ['dockerode', 'pg', 'node-forge', 'tar', 'inquirer', 'listr2'];

/** Runs the CLI with a resolve hook and returns the npm packages it loaded. */
async function packagesLoadedBy(args: string[]): Promise<Set<string>> {
  const record = path.join(root, `modules-${args.join('-')}.txt`);
  const result = await runCli(args, {nodeArgs: ['--import', path.join(repoRoot, 'test/helpers/record-modules.mjs')], env: {RECORD_MODULES_FILE: record}});
  expect(result.code).toBe(0);
  const urls = (await fs.readFile(record, 'utf8')).split('\n');
  return new Set(urls.flatMap((u) => /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(u)?.[1] ?? []));
}

describe('startup', () => {
  it('--version prints the user agent and loads no heavy module, not even oclif', async () => {
    const result = await runCli(['--version']);
    expect(result.stdout).toMatch(/^dforge\/0\.1\.0 linux-x64 node-v2\d+\.\d+\.\d+\n$/);
    const loaded = await packagesLoadedBy(['--version']);
    for (const heavy of [...HEAVY, '@oclif/core']) expect(loaded).not.toContain(heavy);
  });

  it('help for a topic loads none of the heavy modules', async () => {
    const loaded = await packagesLoadedBy(['help', 'tenant']);
    for (const heavy of HEAVY) expect(loaded).not.toContain(heavy);
  });

  it('running a command loads none of the heavy modules it does not need', async () => {
    const loaded = await packagesLoadedBy(['config', 'schema']);
    expect(loaded).toContain('@oclif/core');
    for (const heavy of HEAVY) expect(loaded).not.toContain(heavy);
  });

  it("keeps V8's code cache in the user's own directory, never in the shared temp directory", async () => {
    // A cache directory another user can create first would let them plant code a root-run dforge executes.
    const home = await fs.mkdtemp(path.join(root, 'home-'));
    const tmp = await fs.mkdtemp(path.join(root, 'tmp-'));
    const result = await runCli(['config', 'schema'], {env: {HOME: home, TMPDIR: tmp, NODE_COMPILE_CACHE: ''}});
    expect(result.code).toBe(0);
    expect((await fs.readdir(path.join(home, '.cache/dforge/node-compile-cache'))).length).toBeGreaterThan(0);
    expect(await fs.readdir(tmp)).toEqual([]);

    // HOME kept across sudo: a home another user owns gets no cache, and the command still runs.
    const theirs = await fs.mkdtemp(path.join(root, 'theirs-'));
    await fs.chown(theirs, 4242, 4242);
    const asRoot = await runCli(['config', 'schema'], {env: {HOME: theirs, TMPDIR: tmp, NODE_COMPILE_CACHE: ''}});
    expect(asRoot.code).toBe(0);
    expect(await fs.readdir(theirs)).toEqual([]);
    expect(await fs.readdir(tmp)).toEqual([]);
  });

  it('answers --version on the runtime Node 24 toolchain', async () => {
    const result = await runCli(['--version']);
    expect(result.stdout).toContain('node-v24.');
  });

  it('serves help that is byte-identical to what oclif renders live', async () => {
    const cache = JSON.parse(await fs.readFile(HELP_CACHE_FILE, 'utf8')) as HelpCache;
    expect(Object.keys(cache.entries)).toEqual(expect.arrayContaining(['', 'tenant', 'backup', 'config', 'config validate']));
    for (const [id, text] of Object.entries(cache.entries)) {
      const args = ['help', ...(id ? id.split(' ') : [])];
      const live = await runCli(args, {env: {DFORGE_NO_FAST_PATH: '1'}});
      expect(live.stdout, `help ${id}`).toBe(text);
      const fast = await runCli(id ? [...id.split(' '), '--help'] : ['--help']);
      expect(fast.stdout, `${id} --help`).toBe(text);
    }
  });

  it('lists every registered topic in the root help', async () => {
    const result = await runCli(['help', 'tenant']);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('$ dforge tenant COMMAND');
  });
});

describe('exit codes and output streams', () => {
  it('exits 2 for an unknown flag and says how to get help', async () => {
    const result = await runCli(['config', 'validate', '--no-such-flag']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('Nonexistent flag: --no-such-flag');
    expect(result.stderr).toContain('Run: dforge config validate --help');
    expect(result.stdout).toBe('');
  });

  it('exits 2 for an unknown command and names the closest one in plain text', async () => {
    const result = await runCli(['config', 'valdate']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('"config valdate" is not a dforge command');
    expect(result.stderr).toContain('Did you mean: dforge config validate');
    const json = await runCli(['config', 'valdate', '--json']);
    expect(json.code).toBe(2);
    expect(JSON.parse(json.stdout).error).toMatchObject({kind: 'usage', data: {suggestion: 'config validate'}});
  });

  it('prints no ANSI colour when not on a terminal', async () => {
    const result = await runCli(['config', 'validate', '--dir', path.join(root, 'none')], {env: {NO_COLOR: undefined, FORCE_COLOR: undefined}});
    expect(result.code).toBe(1);
    expect(result.stderr).not.toMatch(/\u001B\[/);
  });
});

describe('config validate', () => {
  const write = async (name: string, text: string): Promise<string> => {
    const file = path.join(root, name);
    await fs.writeFile(file, text);
    return file;
  };
  const good = `version: 1\ndomain: dforge.example.com\ntarget: embedded\nprimaryRegion: eu\nregions:\n  eu:\n    clusters:\n      - name: eu-1\n        kind: embedded\n`;

  it('accepts a valid file: data on stdout, exit 0', async () => {
    const file = await write('good.yaml', good);
    const result = await runCli(['config', 'validate', '--file', file, '--json']);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toEqual({schemaVersion: 1, file, valid: true, target: 'embedded', regions: ['eu'], clusters: 1});
  });

  it.each([
    ['broken YAML', 'version: 1\ndomain: "unterminated\ntarget: embedded\n', /broken\.yaml:\d+:\d+: /, /fix: /],
    ['an unknown key', good.replace('target: embedded', 'target: embedded\ntagret: k8s'), /unknown-key\.yaml:4:1: tagret: unknown key "tagret"/, /fix: did you mean "target"\?/],
    ['a wrong type', good.replace('kind: embedded', 'kind: embedded\n        port: five'), /wrong-type\.yaml:10:15: regions\.eu\.clusters\[0\]\.port: /, /fix: use a number here, without quotes/],
  ])('rejects %s with the file, the line and a fix; exit 1', async (_label, text, where, fix) => {
    const name = `${_label.replace(/^(an?|a) /, '').replaceAll(' ', '-').replace('broken-YAML', 'broken')}.yaml`;
    const file = await write(name, text);
    const human = await runCli(['config', 'validate', '--file', file]);
    expect(human.code).toBe(1);
    expect(human.stdout).toBe('');
    expect(human.stderr).toMatch(where);
    expect(human.stderr).toMatch(fix);
    expect(human.stderr).toContain('What to do:');

    const machine = await runCli(['config', 'validate', '--file', file, '--json']);
    expect(machine.code).toBe(1);
    const {error} = JSON.parse(machine.stdout) as {error: {kind: string; exitCode: number; data: {file: string; issues: Array<{line: number; column: number; fix: string}>}}};
    expect(error).toMatchObject({kind: 'user', exitCode: 1, data: {file}});
    expect(error.data.issues[0]).toMatchObject({line: expect.any(Number), column: expect.any(Number), fix: expect.any(String)});
  });

  it('says how to create a config when there is none', async () => {
    const result = await runCli(['config', 'validate', '--dir', path.join(root, 'empty')]);
    expect(result.code).toBe(1);
    expect(result.stderr).toContain('dforge config init');
  });

  it('reads the install directory from DFORGE_HOME', async () => {
    const dir = path.join(root, 'home');
    expect((await runCli(['config', 'init', '--domain', 'erp.example.com'], {env: {DFORGE_HOME: dir}})).code).toBe(0);
    const result = await runCli(['config', 'validate', '--json'], {env: {DFORGE_HOME: dir}});
    expect(JSON.parse(result.stdout)).toMatchObject({file: path.join(dir, 'dforge.yaml'), valid: true});
  });
});

describe('config schema', () => {
  it('prints a JSON Schema on stdout', async () => {
    const result = await runCli(['config', 'schema']);
    expect(result.code).toBe(0);
    expect(JSON.parse(result.stdout)).toMatchObject({title: 'dforge.yaml', type: 'object'});
  });
});

describe('config init', () => {
  it('lays out the install directory, never overwrites a config, and refuses a hostile domain', async () => {
    const dir = path.join(root, 'install');
    const first = await runCli(['config', 'init', '--dir', dir, '--domain', 'dforge.example.com', '--json']);
    expect(first.code).toBe(0);
    expect(JSON.parse(first.stdout)).toMatchObject({createdConfig: true});
    expect((await fs.stat(path.join(dir, 'secrets'))).mode & 0o777).toBe(0o700);
    const validated = await runCli(['config', 'validate', '--dir', dir]);
    expect(validated.code).toBe(0);

    await fs.appendFile(path.join(dir, 'dforge.yaml'), '# operator edit\n');
    const again = await runCli(['config', 'init', '--dir', dir, '--domain', 'other.example.com', '--json']);
    expect(JSON.parse(again.stdout)).toMatchObject({createdConfig: false});
    expect(await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8')).toContain('# operator edit');

    const hostile = await runCli(['config', 'init', '--dir', path.join(root, 'hostile'), '--domain', 'x.example.com\nregions: {}']);
    expect(hostile.code).toBe(1);
    expect(hostile.stderr).toContain('--domain is not valid');
    await expect(fs.stat(path.join(root, 'hostile', 'dforge.yaml'))).rejects.toThrow();
  });
});
