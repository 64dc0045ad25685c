import { describe, expect, it } from 'vitest';
import { isVirtstreamError } from '../../../src/core/errors.js';
import { checkHmpOutput, escapeVirshListValue, parseDomainState, parseNameList, parseQemuImgInfo } from '../../../src/libvirt/virsh-output.js';

const CHAIN = JSON.stringify([
  {
    'backing-filename-format': 'qcow2',
    'virtual-size': 33554432,
    filename: `/img/d 'q" $(id).qcow2.ov1`,
    'cluster-size': 65536,
    format: 'qcow2',
    'actual-size': 204800,
    'format-specific': { type: 'qcow2', data: { compat: '1.1', corrupt: false } },
    'full-backing-filename': `/img/d 'q" $(id).qcow2`,
    'backing-filename': `d 'q" $(id).qcow2`,
    'dirty-flag': false,
  },
  { 'virtual-size': 33554432, filename: `/img/d 'q" $(id).qcow2`, format: 'raw', 'actual-size': 4096 },
]);

describe('virsh and qemu-img output parsing', () => {
  it('parses domain states', () => {
    expect(parseDomainState('running\n\n')).toBe('running');
    expect(parseDomainState('shut off (destroyed)\n')).toBe('shut off');
    expect(parseDomainState('blocked-weird\n')).toBe('unknown');
    expect(() => parseDomainState('\n')).toThrow(expect.objectContaining({ code: 'ERR_LIBVIRT' }) as Error);
  });

  it('parses name lists with hostile names', () => {
    expect(parseNameList(`a b\nvs 'q" $(id)\n\n`)).toEqual(['a b', `vs 'q" $(id)`]);
    expect(parseNameList('')).toEqual([]);
  });

  it('parses a backing chain', () => {
    const chain = parseQemuImgInfo(CHAIN);
    expect(chain).toHaveLength(2);
    expect(chain[0]).toMatchObject({
      filename: `/img/d 'q" $(id).qcow2.ov1`,
      format: 'qcow2',
      virtualSize: 33554432,
      fullBackingFilename: `/img/d 'q" $(id).qcow2`,
      backingFormat: 'qcow2',
      corrupt: false,
      clusterSize: 65536,
    });
    expect(chain[1]!.backingFilename).toBeUndefined();
    expect(parseQemuImgInfo(JSON.stringify({ filename: '/a', format: 'raw', 'virtual-size': 0 }))).toHaveLength(1);
  });

  it.each([
    ['not JSON', '{'],
    ['truncated', CHAIN.slice(0, 100)],
    ['empty array', '[]'],
    ['not objects', '[1,2]'],
    ['missing size', JSON.stringify({ filename: '/a', format: 'raw' })],
    ['negative size', JSON.stringify({ filename: '/a', format: 'raw', 'virtual-size': -1 })],
    ['string size', JSON.stringify({ filename: '/a', format: 'raw', 'virtual-size': '5' })],
  ])('rejects %s with ERR_FORMAT_CORRUPT', (_l, text) => {
    let err: unknown;
    try {
      parseQemuImgInfo(text);
    } catch (e) {
      err = e;
    }
    expect(isVirtstreamError(err, 'ERR_FORMAT_CORRUPT')).toBe(true);
  });

  it('escapes virsh list values and checks HMP text', () => {
    expect(escapeVirshListValue('/a,b,,c')).toBe('/a,,b,,,,c');
    expect(checkHmpOutput('', 'qemu-io x')).toBe('');
    expect(() => checkHmpOutput("Error: Device 'x' not found\n", 'qemu-io x')).toThrow(expect.objectContaining({ code: 'ERR_LIBVIRT' }) as Error);
  });
});
