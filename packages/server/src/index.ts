export * from './aggregation/strategy.js';
export * from './aggregation/validate.js';
export * from './aggregation/clustering.js';
