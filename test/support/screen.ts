/**
 * What a terminal shows after `text` (a tiny VT100 subset: CR, LF, cursor up `ESC[nA`, erase to the
 * end of the screen `ESC[J` and of the line `ESC[K`; other sequences are dropped). Tests use it to see
 * whether a line survived the progress renderer's redraws.
 */
export function screen(text: string): string[] {
  const lines: string[] = [''];
  let row = 0;
  let col = 0;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '\x1b') {
      const m = /^\x1b\[(\d*)([A-Za-z])/.exec(text.slice(i));
      if (!m) continue;
      i += m[0].length - 1;
      const n = m[1] === '' ? 1 : Number(m[1]);
      if (m[2] === 'A') row = Math.max(0, row - n);
      else if (m[2] === 'J') {
        lines.splice(row + 1);
        lines[row] = lines[row]!.slice(0, col);
      } else if (m[2] === 'K') lines[row] = lines[row]!.slice(0, col);
      continue;
    }
    if (ch === '\r') col = 0;
    else if (ch === '\n') {
      row++;
      col = 0;
      if (lines.length <= row) lines.push('');
    } else {
      const line = lines[row]!.padEnd(col);
      lines[row] = line.slice(0, col) + ch + line.slice(col + 1);
      col++;
    }
  }
  return lines;
}
