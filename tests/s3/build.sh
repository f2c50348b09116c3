#!/usr/bin/env bash
# Builds the S3-compatible object store the tests and the demo run (s3s-fs, the
# s3s project's file-system backed S3 server, from crates.io) into the cache, once.
# Prints the binary's path.
set -euo pipefail
version=0.14.1
root=${GPU_SHOPPER_CACHE:-$HOME/.cache/gpu-shopper}/s3s-fs-$version
bin=$root/bin/s3s-fs
if [[ ! -x $bin ]]; then
  echo "building s3s-fs $version (about 2 minutes, once)" >&2
  cargo install s3s-fs --version "$version" --locked --features binary --root "$root" >&2
fi
echo "$bin"
