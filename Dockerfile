# syntax=docker/dockerfile:1
# tally: one static binary on distroless. The image has no shell and runs as 65532 with a
# read-only root filesystem: tally writes nothing to disk.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t tally:local .
#   docker run --read-only -e DATABASE_URL=... -p 8000:8000 tally:local            # serve
#   docker run --read-only -e DATABASE_URL=... tally:local migrate

FROM golang:1.26-bookworm AS build
WORKDIR /src
# Modules first, in their own layer: a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# VERSION lands in tally_build_info{version}.
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /out/tally ./cmd/tally

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/tally /tally
# nonroot is 65532:65532; numeric so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
# 8000: the API. 9090: admin (/metrics, /healthz, /readyz).
EXPOSE 8000 9090
# No HEALTHCHECK: there is no shell or curl in the image; orchestrators probe /healthz and /readyz.
ENTRYPOINT ["/tally"]
CMD ["serve"]
