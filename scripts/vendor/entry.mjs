// The entry point of static/vendor/yjs.mjs (built by scripts/build-yjs).
//
// Re-exports all of yjs (Doc, Text, encodeStateVector, encodeStateAsUpdate, applyUpdate,
// createRelativePositionFromTypeIndex, createAbsolutePositionFromRelativePosition,
// relativePositionToJSON, createRelativePositionFromJSON, …) plus lib0's base64 helpers, so
// the browser loads one file with exactly one copy of yjs and lib0 in it:
//
//   import * as Y from '/static/vendor/yjs.mjs';
//   Y.toBase64(Y.encodeStateVector(doc)); Y.fromBase64(string) -> Uint8Array
export * from 'yjs';
export { toBase64, fromBase64 } from 'lib0/buffer';
