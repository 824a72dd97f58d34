#!/usr/bin/env node
// The sources are TypeScript run directly by Node >= 24 (type stripping):
// there is no build step between a checkout and a running agent.
const [major] = process.versions.node.split('.').map(Number);
if (major < 24) {
  process.stderr.write(`conntrail needs Node.js 24 or newer (this is ${process.version}); run it through npm/npx after \`npm run setup\`, which provides Node 24.\n`);
  process.exit(2);
}
// Node's compile cache keeps the type-stripped and compiled modules on disk:
// a warm start skips the TypeScript stripper (and its tens of MB of memory),
// which matters for an agent on every node. The image warms it at build time.
const { enableCompileCache } = await import('node:module');
enableCompileCache?.(process.env.NODE_COMPILE_CACHE ?? new URL('../node_modules/.cache/conntrail', import.meta.url).pathname);
const { main } = await import('./cli.ts');
process.exitCode = await main(process.argv.slice(2));
// Everything a command opened is closed by now, but a client library may keep
// an idle keep-alive socket (the Kubernetes client's HTTPS agent held a
// stopped collector for ~27 s). Give the event loop a moment to drain the
// log, then leave; an unref'd timer never keeps the process alive itself.
setTimeout(() => process.exit(), 1_000).unref();
