import {execFileSync} from 'node:child_process';
import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {PassThrough} from 'node:stream';

import Docker from 'dockerode';

/**
 * The real Docker engine for tests, through dockerode. No registry is reachable, so every image a
 * test needs is built here: from host binaries (with their shared libraries) for small images.
 */
export const TEST_IMAGE_LABEL = 'dev.dforge.test';

export async function connectDocker(): Promise<Docker> {
  const docker = new Docker({socketPath: process.env.DOCKER_SOCKET ?? '/var/run/docker.sock'});
  await docker.ping();
  return docker;
}

/** Why the engine is unusable, or undefined when it answers. */
export async function dockerUnavailableReason(): Promise<string | undefined> {
  try {
    await connectDocker();
    return undefined;
  } catch (err) {
    return `no Docker engine at /var/run/docker.sock (${(err as Error).message}); install docker.io and start dockerd`;
  }
}

/** Host files a binary needs at run time: itself, and every shared library ldd lists. */
export function runtimeClosure(binary: string): string[] {
  const files = new Set<string>([binary]);
  const out = execFileSync('ldd', [binary], {encoding: 'utf8'});
  for (const line of out.split('\n')) {
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (match?.[1]) files.add(match[1]);
  }
  return [...files];
}

export interface HostBinaryImage {
  readonly tag: string;
  /** Absolute host paths; each is copied with its shared libraries to the same path in the image. */
  readonly binaries: readonly string[];
  readonly cmd?: readonly string[];
}

/** Builds a `FROM scratch` image holding the given host binaries, and returns its id. */
export async function buildImageFromHostBinaries(docker: Docker, spec: HostBinaryImage): Promise<string> {
  const context = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-image-'));
  try {
    const rootfs = path.join(context, 'rootfs');
    for (const binary of spec.binaries) {
      for (const file of runtimeClosure(binary)) {
        const target = path.join(rootfs, file);
        await fs.mkdir(path.dirname(target), {recursive: true});
        await fs.copyFile(await fs.realpath(file), target);
        await fs.chmod(target, 0o755);
      }
    }
    await fs.mkdir(path.join(rootfs, 'tmp'), {recursive: true, mode: 0o1777});
    const cmd = spec.cmd ? `CMD ${JSON.stringify(spec.cmd)}\n` : '';
    await fs.writeFile(path.join(context, 'Dockerfile'), `FROM scratch\nCOPY rootfs/ /\nLABEL ${TEST_IMAGE_LABEL}=1\n${cmd}`);
    const stream = await docker.buildImage({context, src: ['Dockerfile', 'rootfs']}, {t: spec.tag, rm: true, forcerm: true});
    await new Promise<void>((resolve, reject) => {
      docker.modem.followProgress(stream, (err: Error | null, events: Array<{error?: string}>) => {
        const failed = events.find((e) => e.error);
        if (err) reject(err);
        else if (failed) reject(new Error(`docker build ${spec.tag} failed: ${failed.error}`));
        else resolve();
      });
    });
    const info = await docker.getImage(spec.tag).inspect();
    return info.Id;
  } finally {
    await fs.rm(context, {recursive: true, force: true});
  }
}

export interface RunResult {
  readonly exitCode: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a container to completion and returns its exit code and demultiplexed output. */
export async function runContainer(docker: Docker, image: string, cmd: readonly string[]): Promise<RunResult> {
  const container = await docker.createContainer({Image: image, Cmd: [...cmd], Labels: {[TEST_IMAGE_LABEL]: '1'}, HostConfig: {NetworkMode: 'none'}});
  try {
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    const chunks = {out: [] as Buffer[], err: [] as Buffer[]};
    stdout.on('data', (c: Buffer) => chunks.out.push(c));
    stderr.on('data', (c: Buffer) => chunks.err.push(c));
    const attach = await container.attach({stream: true, stdout: true, stderr: true});
    container.modem.demuxStream(attach, stdout, stderr);
    const ended = new Promise<void>((resolve) => attach.on('end', () => resolve()));
    await container.start();
    const {StatusCode} = (await container.wait()) as {StatusCode: number};
    await ended;
    return {exitCode: StatusCode, stdout: Buffer.concat(chunks.out).toString(), stderr: Buffer.concat(chunks.err).toString()};
  } finally {
    await container.remove({force: true});
  }
}
