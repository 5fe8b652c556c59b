export * from './detectors.js';
export * from './guard.js';
export * from './call-log.js';
export * from './evaluate.js';
