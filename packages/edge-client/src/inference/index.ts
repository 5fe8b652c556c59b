export * from './alignment.js';
export * from './cloud-client.js';
export * from './fused-source.js';
export * from './fusion.js';
export * from './cloud-source.js';
