import {execFileSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import {afterAll, beforeAll, describe, expect, it} from 'vitest';
import {parse} from 'yaml';

import {runCli, type CliResult} from '../helpers/cli.js';
import {findPgBinaries, freePort} from '../helpers/pg-cluster.js';
import {missingComponent} from '../helpers/requirements.js';

const available = findPgBinaries() !== undefined || missingComponent('PostgreSQL', 'no binaries under /usr/lib/postgresql');
const asRoot = process.getuid?.() === 0;

/** What a refused quickstart must not have left behind. */
async function written(dir: string): Promise<string[]> {
  return (await fs.readdir(dir).catch(() => [] as string[])).filter((e) => ['dforge.yaml', 'secrets', 'pki', 'data'].includes(e));
}

function holdPort(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen({host: '127.0.0.1', port, exclusive: true}, () => resolve(server));
  });
}

function portOf(configText: string): number {
  return (parse(configText) as {regions: {local: {clusters: Array<{port: number}>}}}).regions.local.clusters[0]!.port;
}

describe.skipIf(!available)('quickstart checks everything before it writes, and never ignores a flag on a re-run', () => {
  let root: string;
  let dir: string;
  let port: number;
  const qs = (args: string[], target = dir): Promise<CliResult> => runCli(['quickstart', '--dir', target, ...args]);

  beforeAll(async () => {
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-qs-safety-'));
    await fs.chmod(root, 0o755);
    dir = path.join(root, 'demo');
  });
  afterAll(async () => {
    await runCli(['db', 'stop', '--immediate', '--dir', dir]);
    await fs.rm(root, {recursive: true, force: true});
  });

  it('a taken port is refused before dforge.yaml, keys or PKI exist; the re-run with a free --port succeeds', async () => {
    const taken = await freePort();
    const holder = await holdPort(taken);
    try {
      const refused = await qs(['--port', String(taken)]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain(`port ${taken} on 127.0.0.1`);
      expect(refused.stderr).toContain('already in use');
      expect(refused.stderr).toContain(`ss -ltnp 'sport = :${taken}'`);
      expect(refused.stderr).toContain('--port');
      expect(refused.stderr).toContain('nothing was written');
      expect(refused.stderr).not.toMatch(/bug/i);
      expect(await written(dir)).toEqual([]);
    } finally {
      await new Promise((r) => holder.close(r));
    }
    port = await freePort();
    const ok = await qs(['--port', String(port), '--json']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(portOf(await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8'))).toBe(port);
  });

  it('a re-run with the same flags is a no-op', async () => {
    const before = await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8');
    const again = await qs(['--port', String(port), '--json']);
    expect(again.code, again.stderr).toBe(0);
    expect(JSON.parse(again.stdout).portChanged).toBeUndefined();
    expect(again.stderr).toMatch(/kept .*dforge\.yaml/);
    expect(await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8')).toBe(before);
  });

  it('a different --port while the cluster runs, or a different --region, is refused naming both values', async () => {
    const before = await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8');
    const other = await freePort();
    const movePort = await qs(['--port', String(other)]);
    expect(movePort.code).toBe(1);
    expect(movePort.stderr).toContain(`--port ${other} conflicts with the kept`);
    expect(movePort.stderr).toContain(`port ${port}`);
    expect(movePort.stderr).toContain('dforge db stop');

    const region = await qs(['--region', 'eu']);
    expect(region.code).toBe(1);
    expect(region.stderr).toContain('--region eu conflicts with the kept');
    expect(region.stderr).toContain('says local');
    expect(await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8')).toBe(before);
  });

  it('with the cluster stopped, a new --port is applied: dforge.yaml and the server move to it', async () => {
    expect((await runCli(['db', 'stop', '--dir', dir])).code).toBe(0);
    const moved = await freePort();
    const r = await qs(['--port', String(moved), '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).portChanged).toEqual({cluster: 'local-1', from: port, to: moved});
    const text = await fs.readFile(path.join(dir, 'dforge.yaml'), 'utf8');
    expect(portOf(text)).toBe(moved);
    expect(text).toContain('# yaml-language-server'); // the operator's file is edited, not regenerated
    const status = await runCli(['db', 'status', '--json', '--dir', dir]);
    expect(JSON.stringify(JSON.parse(status.stdout))).toContain(`"port":${moved}`);
    port = moved;
  });

  it.skipIf(!asRoot)('an install directory the postgres account cannot traverse (mktemp -d) is refused early with the chmod', async () => {
    const private0700 = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-qs-0700-'));
    try {
      const target = path.join(private0700, 'demo');
      const r = await qs(['--port', String(await freePort())], target);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/server account \S+ cannot reach/);
      expect(r.stderr).toContain(`chmod o+x ${private0700}`);
      expect(r.stderr).toContain('--dir');
      expect(await fs.readdir(private0700)).toEqual([]);
    } finally {
      await fs.rm(private0700, {recursive: true, force: true});
    }
  });

  it('a path with spaces is refused before anything is written', async () => {
    const target = path.join(root, 'my demo');
    const r = await qs(['--port', String(await freePort())], target);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('no spaces');
    expect(r.stderr).toContain('nothing was written');
    await expect(fs.stat(target)).rejects.toThrow();
  });

  it.skipIf(!asRoot)('--dir on a read-only file system is a clear error naming the path, not a bug', async () => {
    const ro = path.join(root, 'ro');
    await fs.mkdir(ro);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', ro]);
    try {
      const target = path.join(ro, 'demo');
      const r = await qs(['--port', String(await freePort())], target);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(`${ro} (where ${target} would be created) is on a read-only file system`);
      expect(r.stderr).toContain('--dir');
      expect(r.stderr).not.toMatch(/bug/i);
    } finally {
      execFileSync('umount', [ro]);
    }
  });
});
