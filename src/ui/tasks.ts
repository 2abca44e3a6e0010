import type {Output} from './output.js';

/** One step of a multi-step command, as the operator sees it. */
export interface Step<C> {
  readonly title: string;
  /** Does the work; the returned note (if any) is appended to the title once done. */
  run(ctx: C): Promise<string | void>;
}

/**
 * Runs steps in order through listr2, on stderr: an animated list on a terminal, plain lines
 * otherwise, nothing with --quiet.
 * The first failure stops the run and is rethrown unchanged, so the base command reports it.
 */
export async function runSteps<C>(steps: ReadonlyArray<Step<C>>, ctx: C, out: Output, options: {prompting?: boolean} = {}): Promise<C> {
  const {Listr, ListrLogger, ProcessOutput} = await import('listr2');
  // Every stream of the renderers goes to stderr: stdout carries the command's data only.
  const processOutput = new ProcessOutput(process.stderr, process.stderr);
  const list = new Listr<C, 'default' | 'simple', 'verbose'>(
    steps.map((step) => ({
      title: step.title,
      task: async (c: C, task: {title: string}) => {
        const note = await step.run(c);
        if (note) task.title = `${step.title}: ${note}`;
      },
    })),
    {
      concurrent: false,
      exitOnError: true,
      // A step that prompts needs a renderer that prints finished lines and leaves the cursor alone.
      renderer: options.prompting ? 'simple' : 'default',
      // Plain "[STARTED] title" and "[COMPLETED] title: note" lines off a terminal: what cron mails.
      fallbackRenderer: 'verbose',
      fallbackRendererCondition: !out.color,
      silentRendererCondition: out.quiet,
      rendererOptions: {logger: new ListrLogger({useIcons: true, processOutput})},
      fallbackRendererOptions: {logger: new ListrLogger({useIcons: false, processOutput})},
    },
  );
  return list.run(ctx);
}
