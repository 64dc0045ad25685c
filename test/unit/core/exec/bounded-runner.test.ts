/** BoundedRunner on real local processes: a hung command, a stalled reader, a stalled writer, and the pass-through. */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { BoundedRunner } from '../../../../src/core/exec/bounded-runner.js';
import { LocalRunner } from '../../../../src/core/exec/local-runner.js';

/** True while a process with this exact command line exists. */
async function alive(marker: string): Promise<boolean> {
  const r = await new LocalRunner().run(['pgrep', '-f', '--', marker], { okExitCodes: [0, 1] });
  return r.exitCode === 0;
}

describe('BoundedRunner', () => {
  it('a metadata command that hangs fails with ERR_TIMEOUT (retryable) and is killed', async () => {
    const marker = `sleep 997.${process.pid}`;
    const runner = new BoundedRunner(new LocalRunner({ killGraceMs: 100 }), { commandTimeoutMs: 300 });
    await expect(runner.run(['sh', '-c', `exec ${marker}`])).rejects.toMatchObject({ code: 'ERR_TIMEOUT', retryable: true });
    expect(await alive(marker)).toBe(false);
  });

  it('a per-call timeoutMs overrides the bound; 0 disables it', async () => {
    const runner = new BoundedRunner(new LocalRunner(), { commandTimeoutMs: 100 });
    const r = await runner.run(['sh', '-c', 'sleep 0.4; echo ok'], { timeoutMs: 0 });
    expect(r.stdout.toString('utf8')).toBe('ok\n');
    await expect(runner.run(['sh', '-c', 'sleep 5'], { timeoutMs: 200 })).rejects.toMatchObject({ code: 'ERR_TIMEOUT' });
  });

  it('a bulk reader that stops delivering fails with ERR_STREAM_STALLED and is killed; backpressure is no stall', async () => {
    const marker = `sleep 996.${process.pid}`;
    const runner = new BoundedRunner(new LocalRunner({ killGraceMs: 100 }), { stallTimeoutMs: 300 });
    // a slow consumer first: 3 chunks read 400 ms apart (longer than the bound) still succeed
    const ok = runner.spawn(['sh', '-c', 'head -c 3000000 /dev/zero'], { bulk: 'stdout' });
    ok.stdin.end();
    let bytes = 0;
    for await (const c of ok.stdout as AsyncIterable<Buffer>) {
      bytes += c.length;
      if (bytes < 600_000) await new Promise((r) => setTimeout(r, 400));
    }
    await ok.done;
    expect(bytes).toBe(3_000_000);
    // then a source that goes silent
    const proc = runner.spawn(['sh', '-c', `printf data; exec ${marker}`], { bulk: 'stdout' });
    proc.stdin.end();
    const read = pipeline(
      proc.stdout,
      async function* (src: AsyncIterable<Buffer>) {
        for await (const c of src) yield c;
      },
      async (src: AsyncIterable<Buffer>) => {
        for await (const _ of src) void _;
      },
    );
    await expect(read).rejects.toMatchObject({ code: 'ERR_STREAM_STALLED', retryable: true });
    await expect(proc.done).rejects.toMatchObject({ code: 'ERR_STREAM_STALLED' });
    expect(await alive(marker)).toBe(false);
  });

  it('a bulk writer whose command stops reading fails with ERR_STREAM_STALLED', async () => {
    const marker = `sleep 995.${process.pid}`;
    const runner = new BoundedRunner(new LocalRunner({ killGraceMs: 100 }), { stallTimeoutMs: 300 });
    const proc = runner.spawn(['sh', '-c', `exec ${marker}`], { bulk: 'stdin' });
    proc.stdout.resume();
    const big = Readable.from(
      (function* () {
        for (let i = 0; i < 256; i++) yield Buffer.alloc(64 * 1024);
      })(),
    );
    await expect(pipeline(big, proc.stdin)).rejects.toMatchObject({ code: 'ERR_STREAM_STALLED' });
    await expect(proc.done).rejects.toMatchObject({ code: 'ERR_STREAM_STALLED' });
    expect(await alive(marker)).toBe(false);
  });

  it('rejects negative bounds', () => {
    expect(() => new BoundedRunner(new LocalRunner(), { commandTimeoutMs: -5 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }) as Error);
  });
});
