#!/bin/sh
# Installs the MCP client and server that km did not write, for the interop test
# (tests/e2e/monitor/interop.rs): the official MCP Python SDK (PyPI `mcp`) in a venv, and the
# official "everything" server (npm `@modelcontextprotocol/server-everything`), both into
# target/interop (or $KM_INTEROP_DIR). Versions are pinned to the ones the test was written
# against. Needs python3 (with venv) and npm; without them it says so and installs nothing (the
# test then skips, loudly).
#
# usage: sh tests/e2e/monitor/interop/install.sh
set -eu

root=$(cd "$(dirname "$0")/../../../.." && pwd)
dir=${KM_INTEROP_DIR:-$root/target/interop}
MCP_PY_VERSION=2.3.0
EVERYTHING_VERSION=2026.8.31

if ! command -v python3 >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "interop: python3 or npm is missing: not installing the MCP SDK and server" >&2
    exit 0
fi
mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/python" ]; then
    python3 -m venv "$dir/venv"
fi
"$dir/venv/bin/python" -m pip install --quiet --disable-pip-version-check "mcp==$MCP_PY_VERSION"
npm install --prefix "$dir" --no-audit --no-fund --silent \
    "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION"
echo "interop: installed into $dir" >&2
