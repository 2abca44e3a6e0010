import {promises as fs} from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {afterAll, describe, expect, it} from 'vitest';

import {detectComposeCli} from '../../src/runtime/compose-cli.js';
import {ComposeStack} from '../../src/runtime/compose-stack.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {missingComponent} from '../helpers/requirements.js';
import {ensureTestImages} from '../helpers/test-images.js';

/**
 * An install from before the networks were internal: Compose will not change a network in place,
 * so `up` takes the containers and networks down and starts them again, keeping the volume.
 */
const reason = await dockerUnavailableReason();
const available = reason === undefined || missingComponent('Docker', reason);

describe.skipIf(!available)('ComposeStack.up on a network that became internal', () => {
  const project = `dforge-up-${process.pid}`;
  let root: string | undefined;
  let stack: ComposeStack | undefined;

  afterAll(async () => {
    await stack?.down({volumes: true}).catch(() => undefined);
    if (root) await fs.rm(root, {recursive: true, force: true});
  });

  it('recreates the network and the containers, and the volume keeps its data', async () => {
    const docker = await connectDocker();
    const images = await ensureTestImages(docker);
    root = await fs.mkdtemp(path.join(os.tmpdir(), 'dforge-up-'));
    const file = path.join(root, 'compose.yaml');
    const write = (internal: boolean): Promise<void> =>
      fs.writeFile(
        file,
        [
          'services:',
          '  box:',
          `    image: "${images.proxy}"`,
          '    command: ["sh", "-c", "[ -f /data/kept ] || date > /data/kept; exec sleep 600"]',
          '    volumes: ["data:/data"]',
          '    networks: [net]',
          'networks:',
          `  net: {internal: ${internal}}`,
          'volumes:',
          '  data: {}',
          '',
        ].join('\n'),
      );
    stack = new ComposeStack({cli: await detectComposeCli(), composeFile: file, project, docker});
    await write(false);
    await stack.up();
    const [before] = await stack.services();
    const network = async (): Promise<boolean | undefined> => (await docker.listNetworks({filters: {label: [`com.docker.compose.project=${project}`]}}))[0]?.Internal;
    expect(await network()).toBe(false);
    const kept = async (): Promise<string> => {
      const exec = await docker.getContainer((await stack!.services())[0]!.containerId).exec({Cmd: ['cat', '/data/kept'], AttachStdout: true});
      return new Promise((resolve, reject) =>
        exec.start({}, (err, s) => {
          if (err || !s) return reject(err ?? new Error('no stream'));
          let text = '';
          s.on('data', (b: Buffer) => (text += b.toString('latin1')));
          s.on('end', () => resolve(text));
        }),
      );
    };
    await new Promise((r) => setTimeout(r, 1000));
    const first = await kept();
    expect(first.length).toBeGreaterThan(0);

    await write(true);
    await stack.up();
    expect(await network()).toBe(true);
    const [after] = await stack.services();
    expect(after!.containerId).not.toBe(before!.containerId);
    await new Promise((r) => setTimeout(r, 1000));
    expect(await kept()).toBe(first);
  }, 300_000);
});
