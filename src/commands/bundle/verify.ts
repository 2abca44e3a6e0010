import {Args} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {bundleTrustFlags, checkBundleFromFlags} from '../../cli/bundle-trust-flags.js';
import {formatBytes} from '../../ui/bytes.js';
import type {UnsignedAudit} from '../../bundle/trust.js';

export interface BundleVerifyResult {
  file: string;
  release: string;
  dforgeVersion: string;
  bundleJsonSha256: string;
  signer: {publicKeySha256: string} | null;
  bytes: number;
  entries: number;
  images: number;
  unsigned?: UnsignedAudit;
}

export default class BundleVerify extends BaseCommand<typeof BundleVerify> {
  static override summary = 'Check every part, entry, hash and the signature of an offline bundle, streaming; exit 6 on any mismatch.';
  static override description =
    'Accepts the bundle file, or for a split bundle F (or F.parts.json) beside F.001, F.002, …. Signer keys come from --trusted-key and from bundles.trustedKeys in dforge.yaml. An unsigned bundle is refused unless --allow-unsigned, which is written to the ops log of the install when it has one.';
  static override examples = ['<%= config.bin %> bundle verify dforge-1.4.2.bundle --trusted-key bundle-signing.pub', '<%= config.bin %> bundle verify /media/dvd/dforge-1.4.2.bundle.parts.json --json'];
  static override args = {
    file: Args.string({description: 'The bundle, or a split bundle\'s F.parts.json.', required: true}),
  };
  static override flags = bundleTrustFlags;

  async run(): Promise<BundleVerifyResult> {
    const {verified, unsigned} = await checkBundleFromFlags(this.args.file, this.flags, {installDir: this.installDir(), out: this.out});
    const m = verified.manifest;
    if (!this.jsonEnabled()) {
      this.log(`verified: ${verified.source.file} is dforge release ${m.release} (${m.images.length} images, ${m.entries.length} entries, ${formatBytes(verified.bytes)}), ${verified.signer === null ? 'UNSIGNED' : `signed by ${verified.signer.publicKeySha256}`}`);
    }
    return {
      file: verified.source.file,
      release: m.release,
      dforgeVersion: m.dforgeVersion,
      bundleJsonSha256: verified.manifestSha256,
      signer: verified.signer,
      bytes: verified.bytes,
      entries: m.entries.length,
      images: m.images.length,
      ...(unsigned === undefined ? {} : {unsigned}),
    };
  }
}
