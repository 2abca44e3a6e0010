import path from 'node:path';

import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {createBundle, readImageList, releaseImages, resolveExecutable, type CreateResult} from '../../bundle/create.js';
import {readSigningKey} from '../../bundle/signing.js';
import {parseSplitSize} from '../../bundle/size.js';
import {connectDockerEngine} from '../../docker/engine.js';
import {UsageError} from '../../errors.js';
import {formatBytes} from '../../ui/bytes.js';

export default class BundleCreate extends BaseCommand<typeof BundleCreate> {
  static override summary = 'Write a signed offline bundle: the images, the templates and dforge itself, in one tar.';
  static override description = `Streams the images from the Docker engine straight into the bundle (no staging copy; each layer stored once), adds the templates and the dforge executable, and signs bundle.json with --key. The bundle is written under a hidden .NAME.*.incomplete directory and renamed into place only when complete. See docs/formats.md, "Offline bundle".`;
  static override examples = [
    '<%= config.bin %> bundle create --release 1.4.2 --key /root/bundle-keys/bundle-signing.key',
    '<%= config.bin %> bundle create --release 1.4.2 --key KEY --split dvd --out /media/dforge-1.4.2.bundle',
    '<%= config.bin %> bundle create --release 1.4.3 --key KEY --since dforge-1.4.2.bundle.json',
  ];
  static override flags = {
    release: Flags.string({summary: 'The release the bundle carries.', required: true}),
    images: Flags.file({summary: "A file listing the images, one name:tag per line (default: the release's dforge/<service>:<release> images)."}),
    key: Flags.file({summary: 'The Ed25519 private key (PKCS#8 PEM, mode 0600) from dforge bundle keygen.', exclusive: ['unsigned']}),
    unsigned: Flags.boolean({summary: 'Write an unsigned bundle (verify refuses it unless --allow-unsigned).', exclusive: ['key']}),
    out: Flags.string({summary: 'The bundle file (default: ./dforge-<release>.bundle).'}),
    split: Flags.string({summary: 'Write parts of this size: 4G, 700M, a byte count, or dvd (4,689,999,872 bytes).'}),
    since: Flags.file({summary: "A delta: leave out every blob this older bundle's bundle.json holds."}),
    executable: Flags.file({summary: 'The dforge single executable to include (default: dist-sea/dforge from npm run build:sea).'}),
    force: Flags.boolean({summary: 'Replace an existing bundle (or parts) at --out.'}),
  };

  async run(): Promise<CreateResult> {
    const {flags} = this;
    if (flags.key === undefined && !flags.unsigned) {
      throw new UsageError('bundle create needs --key to sign the bundle', {
        nextSteps: ['Create a key with: dforge bundle keygen --out DIR, then pass --key DIR/bundle-signing.key.', 'Or pass --unsigned to write a bundle that verify refuses unless told --allow-unsigned.'],
      });
    }
    const splitBytes = flags.split === undefined ? undefined : parseSplitSize(flags.split);
    const key = flags.key === undefined ? undefined : await readSigningKey(flags.key);
    const images = flags.images === undefined ? releaseImages(flags.release) : await readImageList(flags.images);
    const executable = await resolveExecutable(flags.executable);
    const docker = await connectDockerEngine();
    const result = await createBundle(docker, {
      release: flags.release,
      images,
      key,
      out: path.resolve(flags.out ?? `dforge-${flags.release}.bundle`),
      splitBytes,
      since: flags.since,
      executable,
      force: flags.force,
      dforgeVersion: this.config.version,
      progress: (line) => this.out.progress(line),
    });
    if (!this.jsonEnabled()) {
      const where = result.file ?? `${result.parts!.files.length} parts, index ${result.parts!.index}`;
      this.log(`bundle ${where}: ${formatBytes(result.bytes)}, ${result.images.length} images, ${formatBytes(result.sharedBytesSaved)} shared between images stored once; ${result.signer ? `signed by ${result.signer}` : 'UNSIGNED'}`);
    }
    return result;
  }
}
