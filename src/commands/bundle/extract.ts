import path from 'node:path';

import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {extractVerified} from '../../bundle/extract.js';
import {bundleTrustFlags, checkBundleFromFlags} from '../../cli/bundle-trust-flags.js';

export interface BundleExtractResult {
  readonly release: string;
  readonly out: string;
  readonly written: string[];
}

export default class BundleExtract extends BaseCommand<typeof BundleExtract> {
  static override summary = "Verify an offline bundle, then write its dforge executable and templates (and nothing else) into a directory.";
  static override description =
    'How a site with a trusted dforge takes the next release\'s dforge out of its bundle. Only regular files named in the signed bundle.json are written, each hashed again on the way and renamed into place; links, "..", absolute paths, setuid bits and colliding names are refused before anything is written. The very first dforge at a site is checked by hand instead (docs/operations.md, "Air-gapped installs").';
  static override examples = ['<%= config.bin %> bundle extract dforge-1.4.3.bundle --trusted-key bundle-signing.pub --out /opt/dforge-1.4.3'];
  static override args = {
    file: Args.string({description: "The bundle, or a split bundle's F.parts.json.", required: true}),
  };
  static override flags = {
    ...bundleTrustFlags,
    out: Flags.string({summary: 'The directory to write dforge and templates/ into.', required: true}),
    'executable-only': Flags.boolean({summary: 'Write only the dforge executable.'}),
  };

  async run(): Promise<BundleExtractResult> {
    const {verified} = await checkBundleFromFlags(this.args.file, this.flags, {installDir: this.installDir(), out: this.out});
    const out = path.resolve(this.flags.out);
    const written = await extractVerified(verified, out, (e) => e.kind === 'executable' || (!this.flags['executable-only'] && e.kind === 'template'));
    if (!this.jsonEnabled()) this.log(`release ${verified.manifest.release}: wrote ${written.length} files under ${out}`);
    return {release: verified.manifest.release, out, written};
  }
}
