import {Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {backupSchedule, type Schedule} from '../../backup/manage.js';

export default class BackupSchedule extends BaseCommand<typeof BackupSchedule> {
  static override summary = 'Print (or install) the cron line or systemd timer for nightly backups.';
  static override examples = ['<%= config.bin %> backup schedule', '<%= config.bin %> backup schedule --systemd --at 02:30 --install'];
  static override flags = {
    systemd: Flags.boolean({summary: 'A systemd service and timer instead of a cron.d file.'}),
    at: Flags.string({summary: 'Time of day (HH:MM, local time of the host).', default: '02:15'}),
    install: Flags.boolean({summary: 'Write the files under /etc (needs root).'}),
  };

  async run(): Promise<Schedule> {
    if (!/^([01]\d|2[0-3]):[0-5]\d$/.test(this.flags.at)) this.error('--at takes HH:MM, e.g. 02:15', {exit: 2});
    const schedule = await backupSchedule(this.installDir(), {kind: this.flags.systemd ? 'systemd' : 'cron', at: this.flags.at, install: this.flags.install});
    if (!this.jsonEnabled()) for (const [file, content] of Object.entries(schedule.files)) this.log(`# ${file}\n${content}`);
    if (schedule.installed) this.out.progress(`installed ${Object.keys(schedule.files).join(', ')}`);
    return schedule;
  }
}
