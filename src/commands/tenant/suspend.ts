import {Args} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {usingControlPlane} from '../../control/plane.js';
import {changingTenants} from '../../runtime/tenant-catalog.js';
import type {Tenant} from '../../tenants/registry.js';

export default class TenantSuspend extends BaseCommand<typeof TenantSuspend> {
  static override summary = 'Suspend a tenant: its role can no longer log in, and its sessions are ended.';
  static override examples = ['<%= config.bin %> tenant suspend acme'];

  static override args = {slug: Args.string({required: true})};

  async run(): Promise<Tenant> {
    const tenant = await usingControlPlane(this.installDir(), (plane) => changingTenants(plane, [this.args.slug], () => plane.tenants.suspend(this.args.slug), (text) => this.out.warn(text)));
    this.out.progress(`tenant ${tenant.slug} is ${tenant.status}`);
    return tenant;
  }
}
