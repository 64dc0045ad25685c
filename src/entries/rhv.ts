/**
 * oVirt / RHV: `RhvClient`, `ImageioClient` and the four RHV strategies. Never loads ssh2 unless an
 * SSH-based strategy connects.
 *
 * @module virtstream/rhv
 */
export {};
