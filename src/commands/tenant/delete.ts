import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {backupTenant} from '../../backup/service.js';
import {usingControlPlane} from '../../control/plane.js';
import {changingTenants} from '../../runtime/tenant-catalog.js';
import {confirmDestructive} from '../../ui/confirm.js';

export default class TenantDelete extends BaseCommand<typeof TenantDelete> {
  static override summary = "Delete a tenant's database and role; with --shred, destroy its keys too.";
  static override description = `Needs --confirm <slug>, or an interactive confirmation on a terminal.
Without --shred the tenant's data keys are kept, so its backups stay restorable. --shred destroys every key version, which makes every backup of the tenant unreadable, everywhere (crypto-shredding).`;
  static override examples = ['<%= config.bin %> tenant delete acme --confirm acme --final-backup', '<%= config.bin %> tenant delete acme --confirm acme --shred'];

  static override args = {slug: Args.string({required: true})};

  static override flags = {
    confirm: Flags.string({summary: 'Repeat the slug to confirm.'}),
    shred: Flags.boolean({summary: 'Destroy every data-key version (crypto-shredding).'}),
    'final-backup': Flags.boolean({summary: 'Take an encrypted backup first (kept under the retained data keys).', exclusive: ['shred']}),
  };

  async run(): Promise<{slug: string; shredded: number | null}> {
    const slug = this.args.slug;
    const confirm = await confirmDestructive({
      provided: this.flags.confirm,
      expected: slug,
      flag: '--confirm',
      question: `Delete tenant ${slug}${this.flags.shred ? ' and destroy its keys (its backups become unreadable)' : ''}? Type the slug to confirm`,
    });
    const result = await usingControlPlane(this.installDir(), async (plane) => {
      if (this.flags['final-backup']) {
        const backup = await backupTenant(plane, slug);
        this.out.progress(`final backup of ${slug}: ${backup.id}`);
      }
      return changingTenants(plane, [slug], () => plane.tenants.delete(slug, {confirm, shred: this.flags.shred}), (text) => this.out.warn(text));
    });
    this.out.progress(`tenant ${slug} deleted${result.shredded === null ? '' : `; ${result.shredded} key version(s) destroyed`}`);
    return result;
  }
}
