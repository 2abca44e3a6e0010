import {describe, expect, it} from 'vitest';

import {UserError} from '../../src/errors.js';
import {pinnedImages} from '../../src/install/image-pins.js';
import {connectDocker, dockerUnavailableReason} from '../helpers/docker-engine.js';
import {missingComponent} from '../helpers/requirements.js';
import {ensureTestImages} from '../helpers/test-images.js';

/** Pinning on the real engine, with the locally built test images (no registry, so no RepoDigests). */
const reason = await dockerUnavailableReason();
const available = reason === undefined || missingComponent('Docker', reason);

describe.skipIf(!available)('pinnedImages', () => {
  it('pins a local build by its image id, keeps a digest reference, and names an image the engine lacks', async () => {
    const docker = await connectDocker();
    const images = await ensureTestImages(docker);
    const proxy = await docker.getImage(images.proxy).inspect();
    expect(proxy.RepoDigests ?? []).toEqual([]);
    const digestRef = `registry.example.com/dforge/app@sha256:${'a'.repeat(64)}`;
    const pinned = await pinnedImages(docker, {postgres: images.postgres, authDb: images.postgres, auth: digestRef, app: images.standin, proxy: images.proxy});
    expect(pinned.proxy).toBe(proxy.Id);
    expect(pinned.proxy).toMatch(/^sha256:[0-9a-f]{64}$/);
    expect(pinned.postgres).toBe(pinned.authDb);
    expect(pinned.auth).toBe(digestRef);
    // The id is a reference the engine resolves back to the same image.
    expect((await docker.getImage(pinned.app).inspect()).Id).toBe(pinned.app);

    const missing = await pinnedImages(docker, {postgres: 'dforge-e2e/absent:0', authDb: images.postgres, auth: images.standin, app: images.standin, proxy: images.proxy}).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(UserError);
    expect((missing as UserError).message).toContain('dforge-e2e/absent:0 of postgres');
  }, 600_000);
});
