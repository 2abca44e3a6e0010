import type {Output} from './output.js';

/** One step of a multi-step command, as the operator sees it. */
export interface Step<C> {
  readonly title: string;
  /** Does the work; the returned note (if any) is appended to the title once done. */
  run(ctx: C): Promise<string | void>;
}

/**
 * Runs steps in order through listr2, on stderr: an animated list on a terminal, plain
 * "title ... done" lines otherwise (what cron mails), nothing with --quiet.
 * The first failure stops the run and is rethrown unchanged, so the base command reports it.
 */
export async function runSteps<C>(steps: ReadonlyArray<Step<C>>, ctx: C, out: Output): Promise<C> {
  const {Listr, ProcessOutput} = await import('listr2');
  const list = new Listr<C>(
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
      renderer: 'default',
      fallbackRenderer: 'simple',
      fallbackRendererCondition: !out.color,
      silentRendererCondition: out.quiet,
      rendererOptions: {lazy: false},
      fallbackRendererOptions: {timestamp: undefined},
      // Both of listr2's streams go to stderr: stdout carries the command's data only.
      processOutput: new ProcessOutput(process.stderr, process.stderr),
    } as ConstructorParameters<typeof Listr<C>>[1],
  );
  return list.run(ctx);
}
