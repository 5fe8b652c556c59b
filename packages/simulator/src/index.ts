export * from './local-federation.js';
