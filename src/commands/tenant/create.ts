import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {changingTenants} from '../../runtime/tenant-catalog.js';
import type {Placement} from '../../tenants/placement.js';
import type {Tenant} from '../../tenants/registry.js';

export default class TenantCreate extends BaseCommand<typeof TenantCreate> {
  static override summary = 'Create a tenant: its own PostgreSQL database, login role and data key.';
  static override description = `Steps: register as provisioning, create the role (random password, sealed) and the database tenant_<slug> owned by it, revoke CONNECT from PUBLIC, set the connection limit, create the schemas crm, hr, fin, wms and audit with the change-log trigger function, create data key v1, mark active.
Placement: the tenant's database goes to the cluster of its region with the most free capacity (maxTenants minus its tenants; a cluster without maxTenants counts as unlimited and is preferred; ties go to the cluster with fewer tenants, then the one declared first), or to the cluster named with --cluster, which must be in the tenant's region and have room. A full region is refused. The output says which cluster and why.
If a run is interrupted, run the same command again: it finishes the tenant.`;
  static override examples = [
    '<%= config.bin %> tenant create acme',
    '<%= config.bin %> tenant create globex --region us --json',
    '<%= config.bin %> tenant create initech --cluster eu-2',
  ];

  static override args = {
    slug: Args.string({description: 'Tenant slug: 2-40 characters, lowercase letters, digits and "-", starting with a letter.', required: true}),
  };

  static override flags = {
    region: Flags.string({summary: 'Region to pin the tenant to (required when the install has more than one region).'}),
    cluster: Flags.string({summary: "Put the tenant's database on this cluster (it implies its region; it must have free capacity)."}),
  };

  async run(): Promise<Tenant & {placement: Placement}> {
    const {tenant, placement} = await usingControlPlane(this.installDir(), (plane) =>
      changingTenants(plane, [this.args.slug], () => plane.tenants.create(this.args.slug, {region: this.flags.region, cluster: this.flags.cluster}), (text) => this.out.warn(text)),
    );
    this.out.progress(`tenant ${tenant.slug} is active: database ${tenant.database} on cluster ${tenant.cluster} (region ${tenant.region}): ${placement.reason}`);
    return {...tenant, placement};
  }
}
