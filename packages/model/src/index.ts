export * from './tfjs-backend.js';
