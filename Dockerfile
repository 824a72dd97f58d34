# One image for both roles: `conntrail agent` (the DaemonSet) and
# `conntrail collector` (the Deployment). TypeScript runs directly on
# Node.js 24 (type stripping), so "build" means installing dependencies,
# compiling node-pty's native addon and type-checking; nothing is emitted.
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
# node-pty (used to run tcpdump and conntrack -E during a capture) is built
# by node-gyp: the compiler and python stay in this stage.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY bin ./bin
COPY agent ./agent
COPY collector ./collector
COPY contract ./contract
# Type-check with the dev dependencies, then drop them (and the npm `node`
# runtime package: the base image already is Node 24).
RUN npx tsc -p tsconfig.json --noEmit \
 && npm prune --omit=dev --no-audit --no-fund \
 && rm tsconfig.json
# Node's compile cache, filled now with every module type-stripped and
# compiled: started from the image, a process skips the TypeScript stripper
# (bin/conntrail.js reads this directory; the root filesystem is read-only).
COPY scripts/warm-compile-cache.js ./scripts/
RUN node scripts/warm-compile-cache.js && rm -r scripts

FROM ${NODE_IMAGE}
# The node tools the agent reads (see agent/commands.ts): iptables ships both
# the legacy and the nft backends (iptables-legacy-save, iptables-nft-save).
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables nftables ipvsadm ipset conntrack iproute2 tcpdump \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app /app
ENV NODE_ENV=production
ENTRYPOINT ["node", "/app/bin/conntrail.js"]
CMD ["--help"]
