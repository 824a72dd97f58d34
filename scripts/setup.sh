#!/usr/bin/env bash
# Installs what conntrail needs on a fresh Debian machine: the node tools it
# reads (iptables with both backends, nftables, conntrack, ipvsadm, iproute2,
# tcpdump) and the npm packages, including the Node.js 24 runtime itself
# (npm package `node`, which puts Node 24 first on PATH for every npm script),
# and a Node.js 22 beside it for the test of the packed package.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the test that renders a bundle's report.html and looks at it.
# openssl: throwaway certificates for the TLS and Kubernetes API tests.
# nfacct: the accounting objects kube-proxy's proxier_test.go iptables rulesets name (-m nfacct).
# prometheus: a real Prometheus scrapes the collector and agent in the tests, and its promtool checks the alert rules
# (the tests run their own server on a free port; the package's own service is not needed).
debian_packages=(iptables nftables conntrack ipvsadm ipset iproute2 tcpdump procps chromium openssl nfacct prometheus)
missing=()
for pkg in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
# kubectl renders manifests/ in the tests (`kubectl kustomize`). Any kubectl
# will do; Debian's kubernetes-client only where there is none.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo"; else
    echo "setup: need root (or sudo) to install Debian packages: ${missing[*]}" >&2; exit 1
  fi
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi

# Node.js 22, the older LTS the client commands (logs, parse, replay, ...) also
# run on: the test that installs the packed package globally runs it there.
# npm's `node` package again, in its own folder: the project's own tree has
# room for one `node`, and that is 24.
node22=.cache/node22
if ! "$node22/node_modules/node/bin/node" --version 2>/dev/null | grep -q '^v22\.'; then
  echo "setup: installing Node.js 22 into $node22 (for test/bin/global-install.test.ts)"
  npm install --prefix "$node22" --no-save --no-package-lock --no-audit --no-fund 'node@~22.23.0'
fi
echo "setup: done ($(node_modules/.bin/node --version), Node $("$node22/node_modules/node/bin/node" --version) for the client commands' test, $(iptables --version), $(conntrack --version 2>&1 | head -1))"
