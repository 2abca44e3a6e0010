import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {openKeyServices} from '../../keys/context.js';
import {diffRuns, listRuns, type PostureDiff} from '../../posture/history.js';
import {renderTable} from '../../ui/table.js';
import {terminalSafe} from '../../ui/terminal-safe.js';

export default class PostureDiffCommand extends BaseCommand<typeof PostureDiffCommand> {
  static override summary = 'What changed between two recorded posture runs (default: the two newest).';
  static override description = 'Runs are recorded with dforge posture --record. Each one is checked against its MAC first: an altered record exits 6.';
  static override examples = ['<%= config.bin %> posture diff', '<%= config.bin %> posture diff 20261128T101500Z-1a2b3c4d 20261128T121500Z-5e6f7a8b --json', '<%= config.bin %> posture diff --list'];
  static override args = {
    from: Args.string({description: 'Older run id or file (default: the second newest).'}),
    to: Args.string({description: 'Newer run id or file (default: the newest).'}),
  };

  static override flags = {
    list: Flags.boolean({summary: 'List recorded run ids instead.'}),
  };

  async run(): Promise<PostureDiff | {runs: string[]}> {
    const dir = this.installDir();
    if (this.flags.list) {
      const runs = await listRuns(dir);
      if (!this.jsonEnabled()) this.log(runs.join('\n') || '(no recorded runs: dforge posture --record)');
      return {runs};
    }
    const diff = await diffRuns(await openKeyServices(dir), [this.args.from, this.args.to].filter((x): x is string => x !== undefined));
    if (!this.jsonEnabled()) {
      this.log(`${diff.from.id} → ${diff.to.id}: score ${diff.from.score} → ${diff.to.score}, coverage ${diff.from.coverage}% → ${diff.to.coverage}%, ${diff.from.overall} → ${diff.to.overall}`);
      this.log(diff.changes.length === 0 ? 'no check changed status' : renderTable(['check', 'scope', 'from', 'to', 'observed now'], diff.changes.map((c) => [c.check, terminalSafe(c.scope), c.from ?? '(new)', c.to ?? '(gone)', terminalSafe(c.observed ?? '')])));
    }
    return diff;
  }
}
