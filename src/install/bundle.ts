import type Docker from 'dockerode';

import {loadBundle} from '../bundle/load.js';
import {repositoryOf} from '../bundle/push.js';
import type {VerifiedBundle} from '../bundle/verified-bundle.js';
import {UsageError, UserError} from '../errors.js';
import {IMAGE_SERVICES, resolvedImages} from '../render/values.js';
import type {PartialAnswers} from './answers.js';

/**
 * `install --bundle F`: the answers a verified bundle implies, and the images step that loads from
 * it. The bundle was verified before install changed anything (src/commands/install.ts).
 */

/** What the install summary says about the bundle it used. */
export interface InstalledBundle {
  readonly release: string;
  readonly bundleJsonSha256: string;
  readonly signer: string | null;
  /** Images loaded into the engine by this run; the others already had the bundle's image id. */
  readonly loaded: string[];
}

/**
 * The bundle's release becomes the install's unless the operator named one, which must then be the
 * same. For Kubernetes, whose nodes pull from a registry, each image the bundle carries is pinned
 * to `registry/repo@<manifest digest>` (pushed there by `dforge bundle push`).
 */
export function answersWithBundle(provided: PartialAnswers, verified: VerifiedBundle, registry: string | undefined): PartialAnswers {
  const release = verified.manifest.release;
  if (provided.release !== undefined && provided.release !== release) {
    throw new UsageError(`--release ${provided.release} does not match the bundle, which carries release ${release}`, {
      nextSteps: [`Drop --release (the bundle's ${release} is used), or install from the bundle of release ${provided.release}.`],
    });
  }
  const answers = {...provided, release};
  if (provided.target !== 'k8s') {
    if (registry !== undefined) throw new UsageError('--registry applies to --target k8s only: a compose install loads the images into the local engine', {nextSteps: ['Drop --registry.']});
    return answers;
  }
  if (registry === undefined) {
    throw new UsageError('a Kubernetes install from a bundle needs --registry HOST[:PORT], the registry its nodes pull from', {
      nextSteps: [`Push the images first: dforge bundle push <bundle> --registry HOST[:PORT], then: dforge install --target k8s --bundle <bundle> --registry HOST[:PORT]`],
    });
  }
  const refs = resolvedImages({images: provided.images ?? {}, release});
  const images = {...provided.images};
  for (const service of IMAGE_SERVICES) {
    const image = verified.manifest.images.find((i) => i.ref === refs[service]);
    if (image) images[service] = `${registry}/${repositoryOf(image.ref).repo}@${image.manifest.digest}`;
  }
  return {...answers, images};
}

/**
 * Every image the config names is either in the bundle (loaded unless the engine already has it
 * under the bundle's image id) or already in the engine; anything else stops the install.
 */
export async function loadBundleImages(docker: Docker, verified: VerifiedBundle, refs: readonly string[], progress?: (done: number, total: number) => void): Promise<InstalledBundle> {
  const toLoad: string[] = [];
  const missing: string[] = [];
  for (const ref of new Set(refs)) {
    const image = verified.manifest.images.find((i) => i.ref === ref);
    const id = await docker
      .getImage(ref)
      .inspect()
      .then((info) => info.Id)
      .catch(() => undefined);
    if (image) {
      if (id !== image.config.digest) toLoad.push(ref);
    } else if (id === undefined) missing.push(ref);
  }
  if (missing.length > 0) {
    throw new UserError(`images neither in the bundle nor in the local engine: ${missing.join(', ')}`, {
      nextSteps: [`The bundle holds: ${verified.manifest.images.map((i) => i.ref).join(', ')}.`, 'Set the images in dforge.yaml (or --image service=ref) to ones it holds, or bring the others into the engine, then re-run.'],
      data: {missing},
    });
  }
  if (toLoad.length > 0) await loadBundle(docker, verified, {refs: toLoad, progress});
  return {release: verified.manifest.release, bundleJsonSha256: verified.manifestSha256, signer: verified.signer?.publicKeySha256 ?? null, loaded: toLoad};
}
