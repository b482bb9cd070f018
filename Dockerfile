# lb-proxy in an empty image: one statically linked binary, nothing else.
#
# Build the binary first (the image does not compile anything):
#   scripts/build-image.sh
# which runs
#   RUSTFLAGS="-C target-feature=+crt-static" \
#     cargo build --release --target x86_64-unknown-linux-gnu -p lb-proxy-bin
#   docker build -t lb-proxy:dev .
#
# The same image is the proxy (`run --config FILE`), a demo backend (`whoami`) and
# its health check (`probe URL`): a scratch image has no shell and no curl.
FROM scratch
COPY target/x86_64-unknown-linux-gnu/release/lb-proxy /lb-proxy
EXPOSE 80
ENTRYPOINT ["/lb-proxy"]
CMD ["--help"]
