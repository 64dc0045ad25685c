/**
 * The extent shapes (defined in core, where the target contract needs them too).
 *
 * @module
 */
export type { Extent, ExtentChunk, ExtentKind, ExtentStream } from '../core/extent.js';
