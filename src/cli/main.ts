#!/usr/bin/env node
// The `virtstream` command; see docs/guides/cli.md.
import { AbortedError } from '../index.js';
import { EXIT } from './exit-codes.js';
import { runCli } from './run-cli.js';

const controller = new AbortController();
let signals = 0;
const onSignal = (signal: NodeJS.Signals): void => {
  signals++;
  if (signals === 1) {
    // runCli prints the notice through its reporter (above the progress bars)
    controller.abort(new AbortedError(signal));
    return;
  }
  process.stderr.write(`${signal} again: exiting now without cleanup.\n`);
  process.exit(EXIT.ABORTED);
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);
// `virtstream list | head -1`: a closed pipe ends the output quietly, like other CLI tools
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw err;
  });
}

// no top-level await: tsup also emits this entry as CommonJS
void runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  signal: controller.signal,
}).then((code) => {
  // runCli decides: an interrupt that came after the work was done (a committed backup) is no failure
  process.exitCode = code;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  // the result is decided; a signal while sockets and timers wind down must not turn it into a kill
  // (signal listeners hold no event-loop reference, so this never delays the exit)
  const exitWithResult = (): never => process.exit(code);
  process.on('SIGINT', exitWithResult);
  process.on('SIGTERM', exitWithResult);
});
