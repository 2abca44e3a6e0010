import {Args} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {bundleTrustFlags, checkBundleFromFlags} from '../../cli/bundle-trust-flags.js';
import {inspectBundle, type BundleInspection} from '../../bundle/inspect.js';
import {formatBytes} from '../../ui/bytes.js';
import {renderTable} from '../../ui/table.js';
import {formatTime} from '../../ui/time.js';

export default class BundleInspect extends BaseCommand<typeof BundleInspect> {
  static override summary = 'Show what an offline bundle holds (release, images, sizes, shared-layer savings, signer, SBOMs), after verifying it.';
  static override description = 'Runs the same verification as dforge bundle verify, with the same trust and refusals, so nothing shown comes from unchecked bytes.';
  static override examples = ['<%= config.bin %> bundle inspect dforge-1.4.2.bundle --trusted-key bundle-signing.pub', '<%= config.bin %> bundle inspect dforge-1.4.2.bundle --json'];
  static override args = {
    file: Args.string({description: 'The bundle, or a split bundle\'s F.parts.json.', required: true}),
  };
  static override flags = bundleTrustFlags;

  async run(): Promise<BundleInspection> {
    const {verified, unsigned} = await checkBundleFromFlags(this.args.file, this.flags, {installDir: this.installDir(), out: this.out});
    const result = await inspectBundle(verified, unsigned);
    if (!this.jsonEnabled()) {
      this.log(`release ${result.release} (dforge ${result.dforgeVersion}, created ${formatTime(result.createdAt)})`);
      this.log(`signer: ${result.signer === null ? 'UNSIGNED' : result.signer.publicKeySha256}`);
      this.log(`size: ${formatBytes(result.bytes)}; shared layers save ${formatBytes(result.sharedLayerSavings)}`);
      if (result.base !== null) this.log(`delta against release ${result.base.release} (${result.base.omittedBlobs} blobs left out)`);
      this.log(renderTable(['image', 'manifest', 'size', 'layers', 'sbom components'], result.images.map((i) => [i.ref, i.manifestDigest, formatBytes(i.size), String(i.layers), i.sbom === null ? '-' : String(i.sbom.components ?? 'too large')])));
    }
    return result;
  }
}
