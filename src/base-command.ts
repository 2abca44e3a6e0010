import {Command, Flags, type Interfaces} from '@oclif/core';

import {DforgeError, ExitCode, UsageError, errorEnvelope, toDforgeError} from './errors.js';
import {InstallDir} from './state/install-dir.js';
import {formatError} from './ui/error-text.js';
import {createOutput, type Output} from './ui/output.js';

export const DEFAULT_INSTALL_DIR = '/opt/dforge';

/**
 * What a command's run() may return: an object (never an array, so a field can be added later
 * without breaking consumers), or nothing when it streamed its output itself.
 */
export type CommandResult = object & {readonly length?: never};

/** A command's `--json` success output: its result plus the version of the result's shape. */
export type JsonSuccess<R extends CommandResult> = R & {readonly schemaVersion: number};

/**
 * The one base every dforge command extends: global flags, `--json`, and a single catch()
 * that turns typed errors into the DESIGN §9 exit codes and a "what happened / what to do" text.
 * Commands stay thin: parse, call one service, return a typed result (the `--json` contract).
 */
export abstract class BaseCommand<T extends typeof Command> extends Command {
  static override enableJsonFlag = true;

  /**
   * Version of this command's `--json` result shape (docs/schemas/<command>.schema.json). Bump it
   * when a field is removed, renamed or changes meaning; adding a field does not.
   */
  static schemaVersion = 1;

  static override baseFlags = {
    dir: Flags.directory({
      summary: 'Install directory.',
      description: 'Holds dforge.yaml, secrets/, rendered/ and runtime/.',
      env: 'DFORGE_HOME',
      default: DEFAULT_INSTALL_DIR,
      helpGroup: 'GLOBAL',
    }),
    quiet: Flags.boolean({
      char: 'q',
      summary: 'Print no progress on stderr; data and errors still print.',
      helpGroup: 'GLOBAL',
    }),
  };

  protected flags!: Interfaces.InferredFlags<(typeof BaseCommand)['baseFlags'] & T['flags']>;
  protected args!: Interfaces.InferredArgs<T['args']>;
  /** Positional arguments as parsed (all of them, for commands with `strict = false`). */
  protected positionals: string[] = [];
  protected out!: Output;

  public override async init(): Promise<void> {
    await super.init();
    const {args, argv, flags} = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (this.ctor as typeof BaseCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      args: this.ctor.args,
      strict: this.ctor.strict,
    });
    this.flags = flags as typeof this.flags;
    this.args = args as typeof this.args;
    this.positionals = argv.map(String);
    this.out = createOutput({json: this.jsonEnabled(), quiet: this.flags.quiet});
  }

  abstract override run(): Promise<CommandResult | undefined>;

  /** The one place every `--json` success gets its schemaVersion. */
  protected override toSuccessJson(result: CommandResult): JsonSuccess<CommandResult> {
    return {schemaVersion: (this.ctor as unknown as typeof BaseCommand).schemaVersion, ...result};
  }

  /** The install directory named by `--dir` / `DFORGE_HOME`. */
  protected installDir(): InstallDir {
    return new InstallDir(this.flags.dir);
  }

  protected override async catch(err: Error & {oclif?: {exit?: number}}): Promise<void> {
    // `this.exit()` and oclif's own help/version exits are control flow, not failures.
    if (err.oclif?.exit !== undefined && err.name === 'ExitError') throw err;
    const typed = isParseError(err) ? new UsageError(err.message, {nextSteps: [`Run: dforge ${this.id?.replaceAll(':', ' ') ?? ''} --help`.trimEnd()]}) : toDforgeError(err, {dir: this.flags?.dir});
    process.exitCode = typed.exitCode;
    if (this.jsonEnabled()) {
      this.logJson(errorEnvelope(typed));
    } else {
      process.stderr.write(formatError(typed, {color: this.out?.color ?? false}));
    }
    if (typed.kind === 'bug' && process.env.DEBUG) process.stderr.write(`${String(typed.cause instanceof Error ? typed.cause.stack : typed.cause)}\n`);
  }
}

/** oclif flag/arg parse failures carry exit code 2; they are usage errors, not bugs. */
function isParseError(err: Error & {oclif?: {exit?: number}}): boolean {
  return !(err instanceof DforgeError) && err.oclif?.exit === ExitCode.usage;
}
