import {Args, Flags} from '@oclif/core';

import {BaseCommand} from '../../base-command.js';
import {sealDestinationCredentials, type SealedCredentials} from '../../backup/s3-credentials.js';
import {UsageError} from '../../errors.js';

const MAX_INPUT = 64 * 1024;

export default class BackupCredentials extends BaseCommand<typeof BackupCredentials> {
  static override summary = "Seal an S3 destination's credentials, read as JSON from stdin.";
  static override description = `Reads {"accessKeyId": "...", "secretAccessKey": "...", "region": "..."} (region optional) from standard input, never from arguments, and seals it under the destination's credentials.secret. The bucket must first answer a listing with them (--no-verify to seal without asking it, e.g. before the store is reachable). Nothing secret is printed or logged; the ops log records the destination and the secret's name.
Standard input must be a pipe or file: on a terminal the command exits 2 instead of waiting.`;
  static override examples = ['<%= config.bin %> backup credentials us-s3 < us-s3.json', 'vault kv get -format=json -field=data secret/us-s3 | <%= config.bin %> backup credentials us-s3'];

  static override args = {destination: Args.string({required: true, description: 'The s3 destination, as named in dforge.yaml.'})};
  static override flags = {verify: Flags.boolean({default: true, allowNo: true, summary: 'List the bucket with the credentials before sealing them.'})};

  async run(): Promise<SealedCredentials> {
    const input = await readStdin();
    const result = await sealDestinationCredentials(this.installDir(), this.args.destination, input, {verify: this.flags.verify});
    this.out.progress(`credentials of ${result.destination} sealed as ${result.secret}${result.verified ? ' (bucket listed with them)' : ''}`);
    return result;
  }
}

/** All of stdin; a terminal or an empty input is a usage error, so the command never waits for typing. */
async function readStdin(): Promise<string> {
  const usage = 'Pipe the JSON in: dforge backup credentials DESTINATION < credentials.json';
  if (process.stdin.isTTY) throw new UsageError('standard input is a terminal: the credentials are read from a pipe or file', {nextSteps: [usage]});
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    size += (chunk as Buffer).length;
    if (size > MAX_INPUT) throw new UsageError('standard input is larger than credentials can be', {nextSteps: [usage]});
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') throw new UsageError('no credentials on standard input', {nextSteps: [usage]});
  return text;
}
