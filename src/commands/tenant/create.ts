import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {changingTenants} from '../../runtime/tenant-catalog.js';
import type {Tenant} from '../../tenants/service.js';

export default class TenantCreate extends BaseCommand<typeof TenantCreate> {
  static override summary = 'Create a tenant: its own PostgreSQL database, login role and data key.';
  static override description = `Steps: register as provisioning, create the role (random password, sealed) and the database tenant_<slug> owned by it, revoke CONNECT from PUBLIC, set the connection limit, create the schemas crm, hr, fin, wms and audit with the change-log trigger function, create data key v1, mark active.
If a run is interrupted, run the same command again: it finishes the tenant.`;
  static override examples = ['<%= config.bin %> tenant create acme', '<%= config.bin %> tenant create globex --region us --json'];

  static override args = {
    slug: Args.string({description: 'Tenant slug: 2-40 characters, lowercase letters, digits and "-", starting with a letter.', required: true}),
  };

  static override flags = {
    region: Flags.string({summary: 'Region to pin the tenant to (default: the primary region).'}),
  };

  async run(): Promise<Tenant> {
    const {tenant} = await usingControlPlane(this.installDir(), (plane) => changingTenants(plane, () => plane.tenants.create(this.args.slug, {region: this.flags.region})));
    this.out.progress(`tenant ${tenant.slug} is active: database ${tenant.database} on cluster ${tenant.cluster} (region ${tenant.region})`);
    return tenant;
  }
}
