#!/usr/bin/env node
// From a checkout the sources are TypeScript run directly by Node (type
// stripping): there is no build step between a checkout and a running agent.
// Node refuses to strip types under node_modules, so the packed package ships
// them emitted as JavaScript in dist/ (`npm pack` runs the emit) and leaves
// the .ts sources out: cli.ts beside this file means a checkout.
// The version check comes before anything is imported, so that an old Node
// says what it lacks instead of failing inside a module.
const [major] = process.versions.node.split('.').map(Number);
if (major < 22) {
  process.stderr.write(`conntrail needs Node.js 22 or newer (this is ${process.version})\n`);
  process.exit(2);
}
const { existsSync } = await import('node:fs');
// Node's compile cache keeps the type-stripped and compiled modules on disk:
// a warm start skips the TypeScript stripper (and its tens of MB of memory),
// which matters for an agent on every node. The image warms it at build time.
// A directory it cannot write only costs the warm start, so a failure is ignored.
const { enableCompileCache } = await import('node:module');
try {
  enableCompileCache?.(process.env.NODE_COMPILE_CACHE ?? new URL('../node_modules/.cache/conntrail', import.meta.url).pathname);
} catch {
  // a cold start is still a start
}
const checkout = existsSync(new URL('./cli.ts', import.meta.url));
const { main } = await import(checkout ? './cli.ts' : '../dist/bin/cli.js');
process.exitCode = await main(process.argv.slice(2));
// Everything a command opened is closed by now, but a client library may keep
// an idle keep-alive socket (the Kubernetes client's HTTPS agent held a
// stopped collector for ~27 s). Give the event loop a moment to drain the
// log, then leave; an unref'd timer never keeps the process alive itself.
setTimeout(() => process.exit(), 1_000).unref();
