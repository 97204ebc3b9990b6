# matformer-server container image.
#
#   podman build --isolation=chroot --format=docker -t matformer-server .   (or: docker build -t matformer-server .)
#   docker run -p 50051:50051 -p 9464:9464 matformer-server
#
# Another model or tier file, baked in at build time (paths inside the build context):
#   --build-arg MODEL_DIR=path/to/model --build-arg TIERS=path/to/tiers.json
# or mounted at run time (absl's --tryfromenv reads FLAGS_<flag> variables):
#   docker run -v /srv/model:/models:ro -e FLAGS_model_dir=/models matformer-server
# Extra arguments are passed to matformer-server (e.g. --max_batch=16).
# deploy/container-smoke.sh builds this file unchanged and serves from it.

ARG BASE_IMAGE=debian:bookworm-slim

# ---- build: the -dev packages and the compiler, thrown away afterwards ----
FROM ${BASE_IMAGE} AS build
# The engine's baseline ISA (AVX2+FMA); the AVX-512 BF16 kernel is chosen at run time.
ARG MATFORMER_ARCH=x86-64-v3
ARG BUILD_JOBS=2
WORKDIR /src
# The package list alone first, so that a source change reuses the package layer.
COPY scripts/install-deps.sh scripts/
RUN scripts/install-deps.sh --build-only && rm -rf /var/lib/apt/lists/*
COPY . .
# Only the installed targets (no tests, no benchmarks); cmake --install lays
# out /opt/matformer/{bin,lib,models,deploy} (see CMakeLists.txt).
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMATFORMER_ARCH="${MATFORMER_ARCH}" \
 && cmake --build /build -j"${BUILD_JOBS}" \
      --target matformer-server matformer-cli matformer-generate matformer-eval matformer_sentencepiece \
 && cmake --install /build --prefix /opt/matformer

# ---- runtime: shared libraries, binaries, model, tiers ----
FROM ${BASE_IMAGE} AS runtime
# The runtime halves of the build stage's -dev packages (checked with ldd on
# the installed binaries; their dependencies come along: c-ares, re2, ssl,
# civetweb, OpenCL loader, libstdc++).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 libdnnl2 libgomp1 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libsentencepiece0 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 matformer \
 && useradd --system --uid 10001 --gid matformer --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin matformer

COPY --from=build /opt/matformer/bin /opt/matformer/bin
COPY --from=build /opt/matformer/lib /opt/matformer/lib
# The model and tiers come from the build context, so a build argument can
# swap them without touching the code.
ARG MODEL_DIR=models/default
ARG TIERS=deploy/tiers.json
COPY ${MODEL_DIR} /opt/matformer/models/default
COPY ${TIERS} /opt/matformer/deploy/tiers.json

ENV FLAGS_model_dir=/opt/matformer/models/default \
    FLAGS_tiers=/opt/matformer/deploy/tiers.json
USER matformer:matformer
WORKDIR /opt/matformer
EXPOSE 50051 9464
# Start-up loads the model and calibrates the latency model before it listens;
# the health check answers SERVING only after that (NOT_SERVING while draining).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/opt/matformer/bin/matformer-cli", "health", "--target=127.0.0.1:50051", "--deadline=4s"]
# SIGTERM drains (server/README.md); give `docker stop -t` more than --drain_timeout (30s).
STOPSIGNAL SIGTERM
# 0.0.0.0: the published ports must reach the server from outside the container.
ENTRYPOINT ["/opt/matformer/bin/matformer-server", "--host=0.0.0.0", "--tryfromenv=model_dir,tiers"]
CMD []
