export * from './strategy.js';
export * from './validate.js';
export * from './sketch.js';
export * from './cluster-quality.js';
export * from './clustering.js';
export * from './profile-clustering.js';
export * from './sampling.js';
export * from './round.js';
