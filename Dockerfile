# tlstrace, built from this repository.
#   docker build -t tlstrace .
#   docker run --rm -e TLSTRACE_API_TOKEN=... -p 5061:5061 \
#       -v "$PWD/deploy/tlstrace.toml:/etc/tlstrace/tlstrace.toml:ro" tlstrace
# docker-compose.yml builds and runs it in front of Kamailio, with Homer, Prometheus, Grafana.
#
# Two stages: sslkeylog (a dependency) ships no wheel and compiles against OpenSSL's headers,
# so the compiler and headers stay in the build stage; the runtime stage gets the wheels only.

ARG PYTHON_IMAGE=python:3.11.10-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# the build tools are Debian 12's current ones (pinning them breaks with each security update)
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       gcc libc6-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# only what `pip install .` needs (see .dockerignore)
COPY pyproject.toml setup.py README.md ./
COPY tlstrace ./tlstrace
COPY hep ./hep
COPY api ./api
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tlstrace" \
      org.opencontainers.image.description="TLS observability sidecar for SIP: terminates SIP over TLS, relays it to a SIP server, traces it to Homer over HEPv3" \
      org.opencontainers.image.licenses="GPL-2.0-or-later"
COPY --from=build /wheels /wheels
# only the wheels built above (--no-index): the versions were chosen in the build stage
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels tlstrace \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 tlstrace \
    && useradd --system --uid 10001 --gid tlstrace --home-dir /var/lib/tlstrace \
       --shell /usr/sbin/nologin tlstrace \
    && install -d -o tlstrace -g tlstrace -m 0750 /var/lib/tlstrace \
    && install -d -m 0755 /etc/tlstrace
COPY deploy/tlstrace.toml /etc/tlstrace/tlstrace.toml

USER 10001:10001
WORKDIR /var/lib/tlstrace
ENV PYTHONUNBUFFERED=1
# 5061: SIP over TLS; 8080: REST API and /metrics (bearer token from TLSTRACE_API_TOKEN)
EXPOSE 5061/tcp 8080/tcp
# /healthz needs no token
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
# SIGTERM starts a graceful shutdown (shutdown_timeout, 5 s by default)
STOPSIGNAL SIGTERM
ENTRYPOINT ["tlstrace"]
CMD ["run", "--config", "/etc/tlstrace/tlstrace.toml"]
