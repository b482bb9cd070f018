#!/usr/bin/env bash
# Builds a statically linked lb-proxy and the `FROM scratch` image around it.
#
#   scripts/build-image.sh            # image lb-proxy:dev
#   IMAGE=lb-proxy:test scripts/build-image.sh
#
# glibc is linked statically (`+crt-static`); the linker may warn that getaddrinfo
# needs glibc's shared NSS modules at run time. In a scratch image that means DNS
# names in a config do not resolve; IP addresses, Docker discovery (the socket),
# `whoami` and `probe` need no lookup.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-lb-proxy:dev}"
TARGET=x86_64-unknown-linux-gnu
BIN="target/$TARGET/release/lb-proxy"

# An explicit --target keeps the static flags off build scripts and proc macros.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --target "$TARGET" -p lb-proxy-bin

# A dynamic executable names its loader (PT_INTERP); a static(-pie) one does not.
if LC_ALL=C readelf -l "$BIN" | grep -q INTERP; then
    echo "build-image: $BIN is dynamically linked; it would not start in a scratch image" >&2
    exit 1
fi

docker build -t "$IMAGE" .
echo "built $IMAGE: docker run --rm $IMAGE --version"
