import path from 'node:path';

import {loadConfigFile} from '../config/load.js';
import {UsageError} from '../errors.js';
import type {InstallDir} from '../state/install-dir.js';
import {writeRendered, type WriteResult} from './rendered-file.js';

export type RenderTarget = 'compose' | 'k8s';

export interface RenderResult extends WriteResult {
  readonly target: RenderTarget;
  readonly out: string;
}

/** `dforge render`: the manifests of a target from dforge.yaml and the templates, into `out` (default rendered/<target>). */
export async function renderManifests(dir: InstallDir, options: {target?: RenderTarget; out?: string}): Promise<RenderResult> {
  const config = await loadConfigFile(dir.configFile);
  const target = options.target ?? (config.target === 'embedded' ? undefined : config.target);
  if (!target) throw new UsageError('this is an embedded install, which has no manifests', {nextSteps: ['Pass --target compose or --target k8s to render them anyway.']});
  const overrides = path.join(dir.root, 'templates');
  const files = target === 'compose' ? await (await import('./compose.js')).renderCompose(config, overrides) : await (await import('./k8s.js')).renderKubernetes(config, overrides);
  const out = path.resolve(options.out ?? path.join(dir.renderedDir, target));
  return {target, out, ...(await writeRendered(out, files))};
}
