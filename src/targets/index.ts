export * from './file-repository.js';
