import { isVirtstreamError, redact, redactString } from '../index.js';
import type { ProgressEvent } from '../index.js';
import { fit, formatBytes, formatDuration, formatRate, printable } from './format.js';

/** The innermost virtstream error in the `cause` chain below `err`, if any. */
function rootCause(err: unknown): { code: string; message: string } | undefined {
  let found: { code: string; message: string } | undefined;
  const seen = new Set<unknown>([err]);
  for (let e = (err as { cause?: unknown })?.cause; e !== null && typeof e === 'object' && !seen.has(e); e = (e as { cause?: unknown }).cause) {
    seen.add(e);
    if (isVirtstreamError(e)) found = { code: e.code, message: e.message };
  }
  return found;
}

/** How the CLI writes: bars on a terminal, plain lines in logs, one JSON object per line for machines. */
export type OutputMode = 'tty' | 'plain' | 'json';

/** The part of a writable stream the reporter uses. */
export interface OutputStream {
  write(chunk: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

interface DiskRow {
  key: string;
  label: string;
  transferred: number;
  total: number | undefined;
  firstAt: number;
  firstBytes: number;
  lastAt: number;
  done: boolean;
  /** Plain mode: the last quarter reported. */
  lastQuarter: number;
}

/** Options for {@link Reporter}. */
export interface ReporterOptions {
  mode: OutputMode;
  stdout: OutputStream;
  stderr: OutputStream;
  /** Suppresses progress and info lines (results and errors still print). */
  quiet?: boolean;
  /** Clock in ms, for rates and ETA. @defaultValue performance.now */
  now?: () => number;
}

/**
 * Everything the CLI prints goes through one reporter. Results go to stdout; progress and notes go
 * to stderr (in `json` mode everything is a JSON line on stdout). Text that came from outside (VM
 * and disk names, messages) is stripped of control characters and redacted.
 */
export class Reporter {
  readonly mode: OutputMode;
  readonly #out: OutputStream;
  readonly #err: OutputStream;
  readonly #quiet: boolean;
  readonly #now: () => number;
  readonly #rows = new Map<string, DiskRow>();
  #drawnLines = 0;
  #lastDraw = -Infinity;
  #lateInterrupt = false;

  constructor(options: ReporterOptions) {
    this.mode = options.mode;
    this.#out = options.stdout;
    this.#err = options.stderr;
    this.#quiet = options.quiet ?? false;
    this.#now = options.now ?? (() => performance.now());
  }

  /** Writes one JSON line (json mode only); values are redacted. */
  #json(obj: Record<string, unknown>): void {
    this.#out.write(`${JSON.stringify(redact(obj))}\n`);
  }

  /** Writes a human line to stderr, keeping the progress block below it. */
  #note(line: string): void {
    this.#clearBlock();
    this.#err.write(`${line}\n`);
    this.#drawBlock(true);
  }

  /** A progress event of one VM's operation. */
  progress(vm: string, event: ProgressEvent): void {
    if (this.mode === 'json') {
      this.#json({ ...event, type: event.type, vm });
      return;
    }
    if (this.#quiet) return;
    const who = printable(vm);
    if (event.type === 'phase') {
      if (this.mode === 'plain' || event.phase !== 'transfer') {
        this.#note(
          `${who}: ${event.phase}${event.disk ? ` ${printable(event.name ?? event.disk)}` : ''}${event.detail ? ` (${printable(redactString(event.detail))})` : ''}`,
        );
      }
      return;
    }
    if (event.type === 'warning') {
      this.#note(`${who}: warning: ${printable(redactString(event.message))}`);
      return;
    }
    const key = `${vm}\0${event.disk}`;
    const now = this.#now();
    let row = this.#rows.get(key);
    const isNew = row === undefined;
    if (!row) {
      row = {
        key,
        // the human name when the event carries one beside the stable id
        label: `${who} ${printable(event.name ?? event.disk)}`,
        transferred: 0,
        total: event.total,
        firstAt: now,
        firstBytes: event.transferred,
        lastAt: now,
        done: false,
        lastQuarter: 0,
      };
      this.#rows.set(key, row);
    }
    row.transferred = event.transferred;
    row.total = event.total ?? row.total;
    row.lastAt = now;
    const finished = row.total !== undefined && row.transferred >= row.total;
    if (this.mode === 'plain') {
      const quarter = row.total ? Math.floor((row.transferred / row.total) * 4) : 0;
      if (finished && !row.done) {
        row.done = true;
        this.#err.write(`${row.label}: ${formatBytes(row.transferred)} done in ${formatDuration(now - row.firstAt)}${this.#rateText(row)}\n`);
      } else if (!finished && quarter > row.lastQuarter) {
        row.lastQuarter = quarter;
        this.#err.write(`${row.label}: ${formatBytes(row.transferred)} of ${formatBytes(row.total ?? 0)} (${quarter * 25}%)\n`);
      }
      return;
    }
    row.done = finished;
    // redraw at most ~10 times a second, and always for a new or finished disk
    if (isNew || finished || now - this.#lastDraw >= 100) {
      this.#clearBlock();
      this.#drawBlock(false);
    }
  }

  #rateText(row: DiskRow): string {
    const secs = (row.lastAt - row.firstAt) / 1000;
    if (secs <= 0) return '';
    return ` (${formatRate((row.transferred - row.firstBytes) / secs)})`;
  }

  /** One bar line: label, bar, percent, bytes, rate, ETA. */
  #barLine(row: DiskRow, width: number, labelWidth: number): string {
    const secs = (row.lastAt - row.firstAt) / 1000;
    const rate = secs > 0 ? (row.transferred - row.firstBytes) / secs : 0;
    const pct = row.total ? Math.min(1, row.transferred / row.total) : 0;
    const eta = row.done ? 'done' : rate > 0 && row.total ? `ETA ${formatDuration(((row.total - row.transferred) / rate) * 1000)}` : 'ETA --';
    const stats = ` ${String(Math.floor(pct * 100)).padStart(3)}% ${formatBytes(row.transferred)}/${row.total === undefined ? '?' : formatBytes(row.total)} ${rate > 0 ? formatRate(rate) : '--'} ${eta}`;
    const barWidth = Math.max(5, width - labelWidth - stats.length - 4);
    const filled = Math.round(pct * barWidth);
    return `${fit(row.label, labelWidth)} [${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}]${stats}`.slice(0, Math.max(20, width - 1));
  }

  #clearBlock(): void {
    if (this.mode !== 'tty' || this.#drawnLines === 0) return;
    // cursor up N lines, clear to the end of the screen
    this.#err.write(`\x1b[${this.#drawnLines}A\r\x1b[J`);
    this.#drawnLines = 0;
  }

  #drawBlock(force: boolean): void {
    if (this.mode !== 'tty' || this.#rows.size === 0) return;
    if (!force) this.#lastDraw = this.#now();
    // a fresh pseudo-terminal may report 0 columns: fall back to 80
    const cols = this.#err.columns;
    const width = cols !== undefined && cols >= 40 ? cols : 80;
    const rows = [...this.#rows.values()];
    const labelWidth = Math.max(10, Math.min(Math.max(...rows.map((r) => r.label.length)), Math.floor(width / 3)));
    const lines = rows.map((r) => this.#barLine(r, width, labelWidth));
    this.#err.write(`${lines.join('\n')}\n`);
    this.#drawnLines = lines.length;
  }

  /** Ends the progress block of one operation: the last bars stay on screen. */
  endProgress(): void {
    if (this.mode === 'tty' && this.#rows.size > 0) {
      this.#clearBlock();
      this.#drawBlock(true);
    }
    this.#drawnLines = 0;
    this.#rows.clear();
  }

  /**
   * The notice of a first Ctrl-C/SIGTERM (also when quiet). It goes through the progress block like
   * every note, so that the next redraw of the bars does not erase it; `{ type: 'interrupt' }` in json mode.
   */
  interrupt(signal: string): void {
    const message = `${signal}: aborting, cleaning up (snapshots, transfers, partial backups). Press Ctrl-C again to force.`;
    if (this.mode === 'json') this.#json({ type: 'interrupt', signal, message });
    else this.#note(message);
  }

  /** Says that an interrupt came after the work was done (the command still succeeds); `{ type: 'late-interrupt' }` in json mode. */
  lateInterrupt(message: string, fields: Record<string, unknown> = {}): void {
    this.#lateInterrupt = true;
    if (this.mode === 'json') this.#json({ type: 'late-interrupt', message, ...fields });
    else this.#note(`note: ${printable(redactString(message))}`);
  }

  /** True once {@link lateInterrupt} was said. */
  get lateInterruptNoted(): boolean {
    return this.#lateInterrupt;
  }

  /** A note for humans (stderr); `{ type: 'info' }` in json mode. */
  info(message: string, fields: Record<string, unknown> = {}): void {
    if (this.mode === 'json') this.#json({ type: 'info', message, ...fields });
    else if (!this.#quiet) this.#note(printable(redactString(message)));
  }

  /** A warning (stderr, even when quiet); `{ type: 'warning' }` in json mode. */
  warn(message: string, fields: Record<string, unknown> = {}): void {
    if (this.mode === 'json') this.#json({ type: 'warning', message, ...fields });
    else this.#note(`warning: ${printable(redactString(message))}`);
  }

  /**
   * A result: `data` as one JSON line in json mode (with `type`), else the human `lines` on stdout.
   */
  result(type: string, data: Record<string, unknown>, lines: readonly string[]): void {
    if (this.mode === 'json') {
      this.#json({ type, ...data });
      return;
    }
    this.#clearBlock();
    for (const line of lines) this.#out.write(`${line}\n`);
    this.#drawBlock(true);
  }

  /**
   * Reports a failure: code and message (never a stack or a secret). When the error wraps a
   * virtstream error with another code (an SSH key problem under "virsh list failed"), the cause's
   * code and message are added, so the reason is on top.
   */
  error(err: unknown, fields: Record<string, unknown> = {}): void {
    const code = isVirtstreamError(err) ? err.code : typeof (err as { code?: unknown })?.code === 'string' ? (err as { code: string }).code : 'ERR_INTERNAL';
    const root = rootCause(err);
    const outer = err instanceof Error ? err.message : String(err);
    // a failed remote command's stderr is already in its wrapper's message
    const addCause = root !== undefined && root.code !== code && root.code !== 'ERR_REMOTE_COMMAND' && !outer.includes(root.message);
    const message = addCause ? `${outer}: ${root.message} [${root.code}]` : outer;
    if (root && root.code !== code) fields = { cause: { code: root.code, message: root.message }, ...fields };
    const field = (err as { field?: unknown })?.field;
    if (this.mode === 'json') {
      this.#json({ type: 'error', code, message, ...(typeof field === 'string' ? { field } : {}), ...fields });
      return;
    }
    this.#clearBlock();
    const scope = typeof fields.vm === 'string' ? `${printable(fields.vm)}: ` : '';
    this.#err.write(`error: ${scope}${printable(redactString(message))} [${code}]\n`);
    this.#drawBlock(true);
  }
}
