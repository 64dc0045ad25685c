import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

const root = new URL('../../../', import.meta.url);

/** The members of the `ErrorCode` union, read from its source. */
function unionCodes(): string[] {
  const src = readFileSync(new URL('src/core/errors.ts', root), 'utf8');
  const m = /export type ErrorCode\s*=([\s\S]*?);/.exec(src);
  expect(m, 'ErrorCode union not found in src/core/errors.ts').not.toBeNull();
  return [...m![1]!.matchAll(/'(ERR_[A-Z0-9_]+)'/g)].map((x) => x[1]!);
}

/** The codes in the first column of the table in docs/guides/errors.md. */
function tableRows(): Map<string, string[]> {
  const doc = readFileSync(new URL('docs/guides/errors.md', root), 'utf8');
  const rows = new Map<string, string[]>();
  for (const line of doc.split('\n')) {
    const m = /^\|\s*`(ERR_[A-Z0-9_]+)`\s*\|(.*)\|\s*$/.exec(line);
    if (m)
      rows.set(
        m[1]!,
        m[2]!.split('|').map((c) => c.trim()),
      );
  }
  return rows;
}

describe('docs/guides/errors.md', () => {
  it('has a row for every code in the ErrorCode union', () => {
    const rows = tableRows();
    const missing = unionCodes().filter((c) => !rows.has(c));
    expect(missing, 'add these codes to the table in docs/guides/errors.md').toEqual([]);
  });

  it('lists no code that the union does not have', () => {
    const codes = new Set(unionCodes());
    expect([...tableRows().keys()].filter((c) => !codes.has(c))).toEqual([]);
  });

  it('fills meaning, retryable and typical cause for every row', () => {
    for (const [code, cells] of tableRows()) {
      expect(cells, code).toHaveLength(3);
      expect(
        cells.every((c) => c.length > 0),
        code,
      ).toBe(true);
      expect(cells[1], `${code}: retryable column`).toMatch(/^(yes|no|depends\b)/);
    }
  });
});
