/** commandOutput / commandInput / producerOrSinkError on real local processes: kill, drain, and whose error wins. */
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { commandInput, commandOutput, producerOrSinkError } from '../../../../src/core/exec/command-stream.js';
import { LocalRunner } from '../../../../src/core/exec/local-runner.js';
import { SizeMismatchError } from '../../../../src/core/errors.js';

const runner = new LocalRunner({ killGraceMs: 100 });
const failingSink = (after: number): Writable => {
  let n = 0;
  return new Writable({
    write(chunk: Buffer, _e, cb) {
      n += chunk.length;
      cb(n > after ? Object.assign(new Error('sink full'), { code: 'ENOSPC' }) : null);
    },
  });
};

describe('commandOutput', () => {
  it('streams stdout and resolves done once the command succeeded', async () => {
    const out = commandOutput(runner, ['sh', '-c', 'head -c 3000000 /dev/zero']);
    let bytes = 0;
    await pipeline(
      out.stream,
      new Writable({
        write(c: Buffer, _e, cb) {
          bytes += c.length;
          cb();
        },
      }),
    );
    await out.done;
    expect(bytes).toBe(3_000_000);
  });

  it('a failed sink kills the command; its exit is the consequence, so the sink error is reported', async () => {
    const out = commandOutput(runner, ['sh', '-c', 'exec cat /dev/zero']);
    const sinkError = await pipeline(out.stream, failingSink(1 << 20)).catch((e: unknown) => e);
    const reported = await producerOrSinkError(out, sinkError);
    expect(reported).toBe(sinkError);
    await expect(out.done).rejects.toMatchObject({ code: 'ERR_REMOTE_COMMAND' });
    expect(out.stoppedBySink(undefined)).toBe(true);
  });

  it("a command that failed by itself wins over the truncation it causes, through the layer's mapped error", async () => {
    const out = commandOutput(runner, ['sh', '-c', 'head -c 1000 /dev/zero; echo broken disk >&2; exit 5'], {
      mapError: (e) => Object.assign(new Error('mapped'), { code: 'ERR_LVM', cause: e }),
    });
    const truncated = new SizeMismatchError({ what: 'disk', expected: 2000, actual: 1000 });
    await pipeline(out.stream, new Writable({ write: (_c, _e, cb) => cb() }));
    const reported = await producerOrSinkError(out, truncated);
    expect(reported).toMatchObject({ code: 'ERR_LVM', message: 'mapped' });
    expect(out.stoppedBySink(reported)).toBe(false);
  });

  it('its own stall bound (stallGuard) kills a command that stops printing, with ERR_STREAM_STALLED', async () => {
    const out = commandOutput(runner, ['sh', '-c', 'head -c 100 /dev/zero; exec sleep 30'], { stallTimeoutMs: 200 });
    const err = await pipeline(out.stream, new Writable({ write: (_c, _e, cb) => cb() })).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'ERR_STREAM_STALLED' });
    await expect(out.done).rejects.toMatchObject({ code: 'ERR_STREAM_STALLED' });
    // the command failed by itself: its error is the one to report
    expect(await producerOrSinkError(out, err)).toMatchObject({ code: 'ERR_STREAM_STALLED' });
  });

  it('refuses an aborted signal before starting anything', () => {
    expect(() => commandOutput(runner, ['true'], { signal: AbortSignal.abort() })).toThrow(expect.objectContaining({ code: 'ERR_ABORTED' }));
  });
});

describe('commandInput', () => {
  it('feeds the source and resolves with the bytes fed', async () => {
    const n = await commandInput(runner, ['sh', '-c', 'cat > /dev/null'], Readable.from([Buffer.alloc(1000), Buffer.alloc(24)]));
    expect(n).toBe(1024);
  });

  it('a command that exits by itself wins over the broken pipe; a failed source wins over the kill it causes', async () => {
    const big = (): Readable =>
      Readable.from(
        (function* () {
          for (let i = 0; i < 64; i++) yield Buffer.alloc(1 << 20);
        })(),
      );
    await expect(commandInput(runner, ['sh', '-c', 'head -c 10 > /dev/null; exit 3'], big())).rejects.toMatchObject({
      code: 'ERR_REMOTE_COMMAND',
      exitCode: 3,
    });
    const broken = Readable.from(
      (async function* () {
        yield Buffer.alloc(10);
        throw Object.assign(new Error('source gone'), { code: 'ERR_SOURCE' });
      })(),
    );
    await expect(commandInput(runner, ['sh', '-c', 'exec cat > /dev/null'], broken)).rejects.toMatchObject({ code: 'ERR_SOURCE' });
  });
});
