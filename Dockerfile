# gproxy in a container (README: "Packaging").
#   docker build -t gproxy .
#   docker run --rm -p 1080:1080 gproxy --socks 0.0.0.0:1080 --user alice:secret
#   docker run --rm -p 1080:1080 -v /etc/gproxy:/etc/gproxy:ro gproxy --config /etc/gproxy/gproxy.toml
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gproxy ./gproxy
RUN pip install . && rm -rf /src

# An unprivileged user: listen on ports above 1024 inside the container and map them.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gproxy
USER 10001:10001
WORKDIR /

EXPOSE 1080
# docker stop sends SIGTERM: gproxy drains for --drain-timeout (10 s) and exits 0;
# give it the time: docker stop -t 15.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gproxy"]
CMD ["--help"]
