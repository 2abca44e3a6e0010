// Preloaded with `node --import` to record every module a run resolves, so a test can prove
// which dependencies a command loads. Uses the in-thread hooks of Node 22.15+.
import {registerHooks} from 'node:module';
import {writeFileSync} from 'node:fs';

const seen = new Set();
registerHooks({
  resolve(specifier, context, nextResolve) {
    const result = nextResolve(specifier, context);
    seen.add(result.url);
    return result;
  },
});
process.on('exit', () => {
  writeFileSync(process.env.RECORD_MODULES_FILE, [...seen].join('\n'));
});
