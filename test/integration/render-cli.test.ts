import {createHash} from 'node:crypto';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {parse as parseYaml} from 'yaml';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {runCli} from '../helpers/cli.js';

/** `dforge render` as an operator runs it: deterministic files, local overrides, hostile config refused. */
describe('dforge render', () => {
  let dir: string;
  const cli = (...args: string[]) => runCli([...args, '--dir', dir]);

  async function digest(root: string): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    const walk = async (d: string): Promise<void> => {
      for (const e of await fs.readdir(d, {withFileTypes: true})) {
        const p = path.join(d, e.name);
        if (e.isDirectory()) await walk(p);
        else out[path.relative(root, p)] = createHash('sha256').update(await fs.readFile(p)).digest('hex');
      }
    };
    await walk(root);
    return out;
  }

  beforeAll(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-render-'));
    const r = await cli('config', 'init', '--domain', 'erp.example.com', '--target', 'compose', '--region', 'eu');
    expect(r.code, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await fs.rm(dir, {recursive: true, force: true});
  });

  it('renders the same bytes twice, into rendered/<target> or --out', async () => {
    const first = await cli('render', '--json');
    expect(first.code, first.stderr).toBe(0);
    const r1 = JSON.parse(first.stdout) as {target: string; out: string; written: string[]};
    expect(r1.target).toBe('compose');
    expect(r1.written).toContain('compose.yaml');
    const a = await digest(r1.out);
    const other = path.join(dir, 'elsewhere');
    expect((await cli('render', '--out', other)).code).toBe(0);
    expect(await digest(other)).toEqual(a);
    const again = JSON.parse((await cli('render', '--json')).stdout) as {written: string[]; unchanged: string[]};
    expect(again.written).toEqual([]);
    // Every file but the list of what the render wrote (.dforge-rendered), which is how it knows what to remove.
    expect(again.unchanged.sort()).toEqual(Object.keys(a).filter((f) => f !== '.dforge-rendered').sort());
    const compose = parseYaml(await fs.readFile(path.join(r1.out, 'compose.yaml'), 'utf8')) as {services: Record<string, unknown>};
    expect(Object.keys(compose.services).sort()).toEqual(['app', 'auth', 'auth-db', 'postgres', 'proxy']);
  }, 60_000);

  it('never writes into (or cleans) a directory it did not render', async () => {
    const foreign = path.join(dir, 'foreign');
    await fs.mkdir(foreign);
    await fs.writeFile(path.join(foreign, 'notes.txt'), 'mine');
    const r = await cli('render', '--out', foreign);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('holds files that dforge render did not write');
    expect(await fs.readdir(foreign)).toEqual(['notes.txt']);
  }, 60_000);

  it('renders Kubernetes manifests from the same config with --target k8s', async () => {
    const r = await cli('render', '--target', 'k8s', '--json');
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as {written: string[]}).written).toContain('kustomization.yaml');
  }, 60_000);

  it('a template copied to <dir>/templates/ shadows the packaged one, and the label of that service changes', async () => {
    const before = await fs.readFile(path.join(dir, 'rendered', 'compose', 'compose.yaml'), 'utf8');
    const packaged = path.join(path.dirname(new URL(import.meta.url).pathname), '..', '..', 'templates', 'compose', 'proxy', 'nginx.conf');
    await fs.mkdir(path.join(dir, 'templates', 'compose', 'proxy'), {recursive: true});
    await fs.writeFile(path.join(dir, 'templates', 'compose', 'proxy', 'nginx.conf'), `${await fs.readFile(packaged, 'utf8')}# site tweak\n`);
    const r = JSON.parse((await cli('render', '--json')).stdout) as {written: string[]};
    expect(r.written.sort()).toEqual(['compose.yaml', 'proxy/nginx.conf']);
    expect(await fs.readFile(path.join(dir, 'rendered', 'compose', 'proxy', 'nginx.conf'), 'utf8')).toContain('# site tweak');
    const after = await fs.readFile(path.join(dir, 'rendered', 'compose', 'compose.yaml'), 'utf8');
    const diff = after.split('\n').filter((line, i) => line !== before.split('\n')[i]);
    expect(diff).toHaveLength(1);
    expect(diff[0]).toContain('dev.dforge.config-hash');
    await fs.rm(path.join(dir, 'templates'), {recursive: true});
  }, 60_000);

  it('a hostile domain in dforge.yaml is refused with its line, and nothing is rendered from it', async () => {
    const config = path.join(dir, 'dforge.yaml');
    const good = await fs.readFile(config, 'utf8');
    const before = await digest(path.join(dir, 'rendered', 'compose'));
    await fs.writeFile(config, good.replace('domain: erp.example.com', 'domain: "erp.example.com;\\n  } server { listen 81"'));
    const r = await cli('render');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/dforge\.yaml:\d+:\d+/);
    expect(r.stderr).toContain('domain');
    expect(await digest(path.join(dir, 'rendered', 'compose'))).toEqual(before);
    await fs.writeFile(config, good);
  }, 60_000);
});
