// Type-aware linting (`npm run lint`, and `npm test` after the typecheck).
// The rules are few on purpose: each one finds a real bug (a promise nobody
// awaits, a switch that misses a case, an `any` that turns the checker off) or
// guards the layering; none is about style.
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';

// Relative imports that climb out of the importing file's folder into one of
// the top-level layers, from any depth (`../agent/x.ts`, `../../agent/x.ts`).
const layer = (name) => `^(\\.\\./)+${name}(/|$)`;

const agentFromCollector = {
  regex: layer('agent'),
  message:
    'collector/ must not import from agent/: the two talk only through the records and protocol in contract/.',
};
const collectorFromAgent = {
  regex: layer('collector'),
  message:
    'agent/ must not import from collector/: the two talk only through the records and protocol in contract/.',
};

export default defineConfig(
  // dist/ is what `npm pack` emits (prepack); .cache/ holds setup's Node 22: neither is source.
  { ignores: ['test/fixtures/**', 'dist/**', '.cache/**'] },
  {
    files: ['{agent,collector,contract,bin,test}/**/*.ts'],
    extends: [tseslint.configs.base],
    languageOptions: {
      parserOptions: {
        projectService: true,
        tsconfigRootDir: import.meta.dirname,
      },
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      '@typescript-eslint/no-unnecessary-type-assertion': 'error',
      '@typescript-eslint/no-explicit-any': 'error',
      '@typescript-eslint/await-thenable': 'error',
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          args: 'after-used',
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          caughtErrorsIgnorePattern: '^_',
          destructuredArrayIgnorePattern: '^_',
        },
      ],
    },
  },
  {
    files: ['agent/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: [collectorFromAgent] }] },
  },
  {
    files: ['collector/**/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: [agentFromCollector] }] },
  },
  {
    files: ['contract/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              regex: layer('(agent|collector)'),
              message:
                'contract/ is shared by agent/ and collector/ and must import neither.',
            },
            {
              // Anything that is neither relative nor a Node built-in is a
              // package from npm.
              regex: '^(?!\\.{1,2}/|node:)',
              message:
                'contract/ must stay dependency-free: only Node built-ins (node:*) and other contract/ files.',
            },
          ],
        },
      ],
    },
  },
);
