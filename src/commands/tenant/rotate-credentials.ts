import {Args} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {changingTenants} from '../../runtime/tenant-catalog.js';

export default class TenantRotateCredentials extends BaseCommand<typeof TenantRotateCredentials> {
  static override summary = "Give a tenant's role a new random password; the old one stops working.";
  static override description = 'The new password is sealed under the master key before it is applied, so an interruption never loses the live one. Run it again to finish an interrupted rotation.';
  static override examples = ['<%= config.bin %> tenant rotate-credentials acme'];

  static override args = {slug: Args.string({required: true})};

  async run(): Promise<{slug: string; rotatedAt: string}> {
    const result = await usingControlPlane(this.installDir(), (plane) => changingTenants(plane, [this.args.slug], () => plane.tenants.rotateCredentials(this.args.slug), (text) => this.out.warn(text)));
    this.out.progress(`new credentials for tenant ${result.slug} are in force`);
    return result;
  }
}
