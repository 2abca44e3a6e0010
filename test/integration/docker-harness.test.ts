import {createHash} from 'node:crypto';

import type Docker from 'dockerode';
import {afterAll, beforeAll, describe, expect, it} from 'vitest';

import {buildImageFromHostBinaries, connectDocker, dockerUnavailableReason, runContainer, runtimeClosure} from '../helpers/docker-engine.js';
import {missingComponent} from '../helpers/requirements.js';

const reason = await dockerUnavailableReason();
const available = reason === undefined || missingComponent('Docker engine', reason);
const TAG = 'dforge-test/hostbin:harness';

describe.skipIf(!available)('real Docker engine through dockerode', () => {
  let docker: Docker;
  beforeAll(async () => {
    docker = await connectDocker();
  });
  afterAll(async () => {
    await docker?.getImage(TAG).remove({force: true}).catch(() => undefined);
  });

  it('reports its version', async () => {
    const version = await docker.version();
    expect(version.ApiVersion).toMatch(/^1\.\d+$/);
    expect(Number(version.Version.split('.')[0])).toBeGreaterThanOrEqual(20);
  });

  it('collects a dynamically linked binary with its shared libraries', () => {
    const files = runtimeClosure('/bin/sh');
    expect(files[0]).toBe('/bin/sh');
    expect(files.some((f) => /libc\.so/.test(f))).toBe(true);
  });

  it('builds an image from host binaries without a registry and runs it', async () => {
    const id = await buildImageFromHostBinaries(docker, {tag: TAG, binaries: ['/bin/sh', '/usr/bin/sha256sum'], cmd: ['/bin/sh']});
    expect(id).toMatch(/^sha256:[a-f0-9]{64}$/);
    const result = await runContainer(docker, TAG, ['/bin/sh', '-c', 'printf dforge | /usr/bin/sha256sum; echo to-stderr >&2; exit 3']);
    expect(result.exitCode).toBe(3);
    expect(result.stdout).toBe(`${createHash('sha256').update('dforge').digest('hex')}  -\n`);
    expect(result.stderr).toBe('to-stderr\n');
  });
});
