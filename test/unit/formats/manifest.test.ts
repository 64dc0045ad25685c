import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import type { BackupManifest } from '../../../src/formats/manifest.js';
import {
  MANIFEST_SCHEMA,
  MAX_MANIFEST_BYTES,
  assertArtifactPath,
  assertPlainName,
  manifestToRecord,
  parseManifest,
  serializeManifest,
} from '../../../src/formats/manifest.js';

const SHA = 'a'.repeat(64);

function valid(): BackupManifest {
  return {
    schema: MANIFEST_SCHEMA,
    id: '20261121T233000.123Z-0a1b2c3d',
    vm: { id: 'c0ffee', name: 'web "01" $(rm -rf /)' },
    strategy: 'virsh',
    kind: 'incremental',
    parentId: '20261120T233000.000Z-ffffffff',
    startedAt: '2026-11-21T23:30:00.123Z',
    completedAt: '2026-11-21T23:31:00.000Z',
    labels: { env: 'prod' },
    disks: [
      {
        diskId: 'vda',
        name: 'root',
        format: 'qcow2',
        virtualSize: 10 * 2 ** 30,
        kind: 'incremental',
        parentBackupId: '20261120T233000.000Z-ffffffff',
        extra: { checkpoint: 'cp-1', bitmap: true, generation: 3 },
        file: 'disks/vda-0123456789ab.qcow2',
        bytes: 4096,
        sha256: SHA,
        writtenAt: '2026-11-21T23:30:59.000Z',
      },
      {
        diskId: 'vdb',
        name: 'data',
        format: 'raw',
        virtualSize: 1024,
        kind: 'full',
        fallbackReason: 'no checkpoint',
        file: 'disks/vdb-0123456789ab.raw',
        bytes: 1024,
        sha256: 'b'.repeat(64),
      },
    ],
    metadata: [{ name: 'domain.xml', file: 'meta/domain.xml', bytes: 10, sha256: 'c'.repeat(64) }],
    producer: { name: 'virtstream', version: '0.1.0' },
  };
}

function mutate(fn: (m: Record<string, any>) => void): string {
  const m = JSON.parse(JSON.stringify(valid())) as Record<string, any>;
  fn(m);
  return JSON.stringify(m);
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (err) {
    expect(isVirtstreamError(err)).toBe(true);
    return (err as { code: string }).code;
  }
}

describe('manifest schema', () => {
  it('round-trips through serializeManifest and parseManifest', () => {
    const text = serializeManifest(valid());
    expect(text.endsWith('\n')).toBe(true);
    expect(parseManifest(text)).toEqual(valid());
    expect(parseManifest(Buffer.from(text))).toEqual(valid());
  });

  it('turns into a BackupRecord with plain metadata entries', () => {
    const record = manifestToRecord(valid());
    expect(record).toMatchObject({ id: valid().id, parentId: valid().parentId, kind: 'incremental', vm: valid().vm });
    expect(record.metadata).toEqual([{ name: 'domain.xml', bytes: 10, sha256: 'c'.repeat(64) }]);
    expect(record.disks[0]).toMatchObject({ diskId: 'vda', file: 'disks/vda-0123456789ab.qcow2', sha256: SHA });
  });

  it('drops unknown fields and never lets __proto__ keys reach a prototype', () => {
    const text = mutate((m) => {
      m.future = { x: 1 };
      m.disks[0].future = true;
    }).replace('"labels":{"env":"prod"}', '"labels":{"env":"prod","__proto__":"polluted"}');
    const parsed = parseManifest(text);
    expect('future' in parsed).toBe(false);
    expect('future' in parsed.disks[0]!).toBe(false);
    expect(Object.getPrototypeOf(parsed.labels)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(parsed.labels, '__proto__')?.value).toBe('polluted');
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('rejects malformed JSON, non-objects and oversized input with ERR_REPO_MANIFEST', () => {
    expect(codeOf(() => parseManifest('{"schema": "virtstream.backup/v1", '))).toBe('ERR_REPO_MANIFEST');
    expect(codeOf(() => parseManifest(''))).toBe('ERR_REPO_MANIFEST');
    expect(codeOf(() => parseManifest('null'))).toBe('ERR_REPO_MANIFEST');
    expect(codeOf(() => parseManifest('[]'))).toBe('ERR_REPO_MANIFEST');
    expect(codeOf(() => parseManifest(' '.repeat(MAX_MANIFEST_BYTES + 1)))).toBe('ERR_REPO_MANIFEST');
  });

  it('rejects unknown schema versions and foreign schemas', () => {
    const v2 = mutate((m) => (m.schema = 'virtstream.backup/v2'));
    expect(() => parseManifest(v2)).toThrow(/unsupported schema version/);
    expect(codeOf(() => parseManifest(v2))).toBe('ERR_REPO_MANIFEST');
    expect(codeOf(() => parseManifest(mutate((m) => (m.schema = 'other/v1'))))).toBe('ERR_REPO_MANIFEST');
    expect(codeOf(() => parseManifest(mutate((m) => delete m.schema)))).toBe('ERR_REPO_MANIFEST');
  });

  const wrong: [string, (m: Record<string, any>) => void][] = [
    ['id is a number', (m) => (m.id = 42)],
    ['id has a slash', (m) => (m.id = 'a/b')],
    ['id is ..', (m) => (m.id = '..')],
    ['vm missing', (m) => delete m.vm],
    ['vm.name empty', (m) => (m.vm.name = '')],
    ['vm.name with NUL', (m) => (m.vm.name = 'a\0b')],
    ['strategy missing', (m) => delete m.strategy],
    ['unknown kind', (m) => (m.kind = 'differential')],
    ['incremental without parent', (m) => delete m.parentId],
    ['full with parent', (m) => (m.kind = 'full')],
    ['own parent', (m) => (m.parentId = m.id)],
    ['bad date', (m) => (m.startedAt = 'yesterday')],
    ['impossible date', (m) => (m.completedAt = '2026-13-45T99:00:00Z')],
    ['labels not strings', (m) => (m.labels = { a: 1 })],
    ['disks not an array', (m) => (m.disks = {})],
    ['disk not an object', (m) => (m.disks[0] = 'vda')],
    ['negative bytes', (m) => (m.disks[0].bytes = -1)],
    ['fractional size', (m) => (m.disks[0].virtualSize = 1.5)],
    ['bytes as string', (m) => (m.disks[0].bytes = '4096')],
    ['unsafe integer', (m) => (m.disks[0].bytes = 2 ** 60)],
    ['uppercase sha256', (m) => (m.disks[0].sha256 = 'A'.repeat(64))],
    ['short sha256', (m) => (m.disks[0].sha256 = 'a'.repeat(63))],
    ['unknown format', (m) => (m.disks[0].format = 'vmdk')],
    ['incremental disk without parent', (m) => delete m.disks[0].parentBackupId],
    ['full disk with parent', (m) => (m.disks[1].parentBackupId = m.parentId)],
    ['extra with object value', (m) => (m.disks[0].extra = { a: { b: 1 } })],
    ['extra with NaN-ish value', (m) => (m.disks[0].extra = { a: null })],
    ['duplicate disk id', (m) => (m.disks[1].diskId = 'vda')],
    ['duplicate file', (m) => (m.disks[1].file = m.disks[0].file)],
    ['duplicate metadata', (m) => m.metadata.push({ ...m.metadata[0], file: 'meta/other' })],
    ['metadata not an array', (m) => (m.metadata = 'x')],
    ['producer without name', (m) => (m.producer = {})],
  ];
  it.each(wrong)('rejects a manifest where %s (ERR_REPO_MANIFEST)', (_label, fn) => {
    expect(codeOf(() => parseManifest(mutate(fn)))).toBe('ERR_REPO_MANIFEST');
  });

  const traversal: [string, string][] = [
    ['parent traversal', '../../etc/passwd'],
    ['traversal after prefix', 'disks/../../../etc/passwd'],
    ['absolute path', '/etc/passwd'],
    ['drive letter', 'C:/Windows/x'],
    ['backslash', 'disks\\..\\x'],
    ['NUL byte', 'disks/a\0b'],
    ['wrong folder', 'meta/domain.xml'],
    ['nested path', 'disks/a/b'],
    ['bare folder', 'disks/'],
    ['dot name', 'disks/.'],
    ['dotdot name', 'disks/..'],
    ['no folder', 'vda.qcow2'],
    ['manifest itself', 'manifest.json'],
    ['control character', 'disks/a\nb'],
  ];
  it.each(traversal)('rejects a disk path with %s (ERR_REPO_PATH)', (_label, file) => {
    expect(codeOf(() => parseManifest(mutate((m) => (m.disks[0].file = file))))).toBe('ERR_REPO_PATH');
  });

  it('rejects traversal in metadata names and files (ERR_REPO_PATH)', () => {
    expect(codeOf(() => parseManifest(mutate((m) => (m.metadata[0].file = '../manifest.json'))))).toBe('ERR_REPO_PATH');
    expect(codeOf(() => parseManifest(mutate((m) => (m.metadata[0].name = '../x'))))).toBe('ERR_REPO_PATH');
    expect(codeOf(() => parseManifest(mutate((m) => (m.metadata[0].file = 'disks/domain.xml'))))).toBe('ERR_REPO_PATH');
  });

  it('serializeManifest refuses an invalid manifest', () => {
    const bad = { ...valid(), disks: [{ ...valid().disks[0]!, file: '../x' }] };
    expect(codeOf(() => serializeManifest(bad))).toBe('ERR_REPO_PATH');
    expect(codeOf(() => serializeManifest({ ...valid(), kind: 'full' }))).toBe('ERR_REPO_MANIFEST');
  });

  it('checks plain names and artifact paths directly', () => {
    expect(assertPlainName('domain.xml')).toBe('domain.xml');
    expect(assertPlainName('ünïcødé name (1).ovf')).toBe('ünïcødé name (1).ovf');
    for (const bad of ['', '.', '..', 'a/b', 'a\\b', 'a\0b', 'x'.repeat(256), 'é'.repeat(128), 42]) {
      expect(codeOf(() => assertPlainName(bad))).toBe('ERR_REPO_PATH');
    }
    expect(assertArtifactPath('disks/vda.qcow2', 'disks')).toBe('disks/vda.qcow2');
    expect(codeOf(() => assertArtifactPath('disks/vda.qcow2', 'meta'))).toBe('ERR_REPO_PATH');
  });
});
