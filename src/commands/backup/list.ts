import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import type {BackupRecord} from '../../backup/catalog.js';
import {listBackups} from '../../backup/manage.js';
import type {TenantBackupState} from '../../backup/service.js';
import {usingControlPlane} from '../../control/plane.js';
import {formatBytes} from '../../ui/bytes.js';
import {renderTable} from '../../ui/table.js';
import {formatTime, formatTimeAgo} from '../../ui/time.js';

export default class BackupList extends BaseCommand<typeof BackupList> {
  static override summary = 'List backups from the catalog, and how stale each tenant\'s last success is.';
  static override examples = ['<%= config.bin %> backup list', '<%= config.bin %> backup list --tenant acme --json'];
  static override flags = {tenant: Flags.string({summary: 'Only this tenant.'})};

  async run(): Promise<{backups: BackupRecord[]; tenants: TenantBackupState[]}> {
    const result = await usingControlPlane(this.installDir(), (plane) => listBackups(plane, {tenant: this.flags.tenant}));
    if (!this.jsonEnabled()) {
      this.log(renderTable(['id', 'tenant', 'region', 'size', 'key', 'created', 'verified'], result.backups.map((b) => [b.id, b.tenant, b.region, formatBytes(b.size), `${b.keyId} v${b.keyVersion}`, formatTime(b.createdAt), b.verifiedAt ? formatTime(b.verifiedAt) : '-'])));
      this.log('');
      this.log(renderTable(['tenant', 'last success'], result.tenants.map((t) => [t.tenant, t.lastSuccess === null || t.staleHours === null ? 'never' : formatTimeAgo(t.lastSuccess, t.staleHours)])));
    }
    return result;
  }
}
