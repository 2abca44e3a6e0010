import type Docker from 'dockerode';

import {UserError} from '../errors.js';
import type {ImageService} from '../render/values.js';

/** The repository part of a reference: what is left without its tag (a ":" after the last "/"). */
function repositoryOf(ref: string): string {
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  return colon > slash ? ref.slice(0, colon) : ref;
}

/**
 * Each service's image by a reference that cannot move, read from the local engine: the image's
 * registry digest (repository@sha256:…) when it came from a registry under the same repository,
 * else its image id (sha256:…), which the engine and both Compose versions accept as an image
 * reference. A tag can be re-pointed by a pull or a build; these cannot, so what runs is exactly
 * what install checked. A reference already pinned by digest is kept as it is.
 */
export async function pinnedImages(docker: Docker, images: Record<ImageService, string>): Promise<Record<ImageService, string>> {
  const pinned = {} as Record<ImageService, string>;
  for (const [service, ref] of Object.entries(images) as Array<[ImageService, string]>) {
    if (ref.includes('@sha256:')) {
      pinned[service] = ref;
      continue;
    }
    const info = await docker
      .getImage(ref)
      .inspect()
      .catch((error: unknown) => {
        throw new UserError(`image ${ref} of ${service} is not in the local engine: ${error instanceof Error ? error.message : String(error)}`, {
          nextSteps: ['Pull it (docker pull <image>) or load its archive (docker load -i <file>, or install --bundle), then re-run dforge install.'],
        });
      });
    const repository = repositoryOf(ref);
    pinned[service] = info.RepoDigests?.find((d) => d.startsWith(`${repository}@sha256:`)) ?? info.Id;
  }
  return pinned;
}
