import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {loadBundle, type LoadResult} from '../../bundle/load.js';
import {bundleTrustFlags, checkBundleFromFlags} from '../../cli/bundle-trust-flags.js';
import {connectDockerEngine} from '../../docker/engine.js';
import {byteProgress} from '../../ui/bytes.js';

export default class BundleLoad extends BaseCommand<typeof BundleLoad> {
  static override summary = "Verify an offline bundle, then stream its images into the Docker engine and check each image id.";
  static override description =
    'Nothing is loaded unless the whole bundle verifies; each blob is hashed again on its way into the engine, which discards the archive if one changed since. Layers the engine already has are not sent. Afterwards every image id must be the config digest the signed bundle names (exit 6 otherwise).';
  static override examples = ['<%= config.bin %> bundle load dforge-1.4.2.bundle --trusted-key bundle-signing.pub', '<%= config.bin %> bundle load dforge-1.4.2.bundle --trusted-key PUB --image dforge/app:1.4.2'];
  static override args = {
    file: Args.string({description: "The bundle, or a split bundle's F.parts.json.", required: true}),
  };
  static override flags = {
    ...bundleTrustFlags,
    image: Flags.string({summary: 'Load only this image reference (repeatable); default: every image of the bundle.', multiple: true}),
  };

  async run(): Promise<LoadResult & {unsigned?: unknown}> {
    const {verified, unsigned} = await checkBundleFromFlags(this.args.file, this.flags, {installDir: this.installDir(), out: this.out});
    const docker = await connectDockerEngine();
    const result = await loadBundle(docker, verified, {refs: this.flags.image, progress: byteProgress('load', (line) => this.out.progress(line))});
    if (!this.jsonEnabled()) {
      for (const image of result.images) this.log(`loaded ${image.ref} ${image.imageId} (${image.layersSent} layers sent, ${image.layersPresent} already present)`);
    }
    return {...result, ...(unsigned === undefined ? {} : {unsigned})};
  }
}
