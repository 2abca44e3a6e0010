import type Docker from 'dockerode';

/** Whether the engine has an image by this reference (tag or digest); no registry is asked. */
export async function imagePresent(docker: Docker, ref: string): Promise<boolean> {
  return docker
    .getImage(ref)
    .inspect()
    .then(
      () => true,
      () => false,
    );
}
