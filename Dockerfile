# nodeward: one static binary for the agent (DaemonSet) and the broker
# (sidecar). Build: docker build -t nodeward:dev .
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/nodeward ./cmd/nodeward

# distroless/static: no shell, no package manager, CA certificates for IdPs.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/nodeward /usr/bin/nodeward
# Non-root by default (the broker sidecar). The agent DaemonSet runs as
# uid 0 with every capability dropped but SYS_PTRACE, which attesting other
# users' processes needs (packaging/kubernetes/daemonset.yaml).
USER 65532:65532
ENV SPIFFE_ENDPOINT_SOCKET=unix:///run/nodeward/workload.sock
ENTRYPOINT ["/usr/bin/nodeward"]
CMD ["agent", "--config", "/etc/nodeward/agent.yaml"]
