import {promises as fs} from 'node:fs';

import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {defaultPushJournalDir} from '../../bundle/push-journal.js';
import {pushBundle, type PushResult} from '../../bundle/push.js';
import {openRegistry, readRegistryCredentials} from '../../bundle/registry-client.js';
import {bundleTrustFlags, checkBundleFromFlags} from '../../cli/bundle-trust-flags.js';
import {UserError} from '../../errors.js';
import {byteProgress} from '../../ui/bytes.js';

export default class BundlePush extends BaseCommand<typeof BundlePush> {
  static override summary = 'Verify an offline bundle, then push its images to a private registry over TLS, sending only the blobs it lacks.';
  static override description = `The registry login comes from --registry-auth (a 0600 file with one line USERNAME:PASSWORD) or DFORGE_REGISTRY_USERNAME and DFORGE_REGISTRY_PASSWORD, never from a flag's value. Each blob is checked with HEAD first, mounted from a repository this push already filled, or uploaded from the bundle (hashed again on the way). A killed push resumes from its journal under $XDG_STATE_HOME/dforge/push/. Manifests go last and are read back: the digest the registry serves must be the signed one.`;
  static override examples = [
    '<%= config.bin %> bundle push dforge-1.4.2.bundle --registry registry.internal:5000 --ca ca.crt --registry-auth /root/registry.auth --trusted-key bundle-signing.pub',
  ];
  static override args = {
    file: Args.string({description: "The bundle, or a split bundle's F.parts.json.", required: true}),
  };
  static override flags = {
    ...bundleTrustFlags,
    registry: Flags.string({summary: 'The registry, HOST[:PORT]; HTTPS only.', required: true}),
    ca: Flags.file({summary: "A CA certificate (PEM) to trust for the registry instead of the system's.", exists: true}),
    'registry-auth': Flags.file({summary: 'A file (mode 0600) holding USERNAME:PASSWORD for the registry.', exists: true}),
  };

  async run(): Promise<PushResult> {
    const {flags} = this;
    const {verified} = await checkBundleFromFlags(this.args.file, flags, {installDir: this.installDir(), out: this.out});
    const ca = flags.ca === undefined ? undefined : await fs.readFile(flags.ca).catch((err: NodeJS.ErrnoException) => {
      throw new UserError(`cannot read the CA certificate ${flags.ca}: ${err.code ?? err.message}`, {nextSteps: ['Pass the PEM file of the CA that issued the registry certificate.']});
    });
    const credentials = await readRegistryCredentials({file: flags['registry-auth']});
    const total = verified.manifest.images.reduce((n, i) => n + i.config.size + i.layers.reduce((m, l) => m + l.size, 0), 0);
    const progress = byteProgress('push', (line) => this.out.progress(line));
    let done = 0;
    const client = openRegistry({
      host: flags.registry,
      ca,
      credentials,
      onProgress: (p) => {
        if (p.retry) this.out.progress(`push: ${p.blob} attempt ${p.retry.attempt} after ${p.retry.reason}`);
        else if (p.bytes === p.total) progress((done += p.total), total);
      },
    });
    try {
      const result = await pushBundle(client, verified, {journalDir: defaultPushJournalDir()});
      if (!this.jsonEnabled()) {
        for (const image of result.images) this.log(`pushed ${image.ref} → ${image.pinned}`);
        this.log(`blobs: ${result.blobs.uploaded} uploaded, ${result.blobs.mounted} mounted, ${result.blobs.present} already there`);
      }
      return result;
    } finally {
      client.close();
    }
  }
}
