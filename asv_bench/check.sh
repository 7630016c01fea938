#!/bin/sh
# What CI runs: record this machine's description, then import every fastbp benchmark
# and check that asv discovers it (nothing is timed).
set -eu
cd "$(dirname "$0")"
asv machine --yes
asv check -E existing:same
