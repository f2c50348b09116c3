# Multi-stage build: a static-enough binary on a distroless, non-root base.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin gpu-shopper

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/gpu-shopper /usr/local/bin/gpu-shopper
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gpu-shopper"]
CMD ["controller"]
