# wheelfarm proxy image: runs as an unprivileged user, keeps its cache on a volume.
#   docker build -t wheelfarm .
#   docker run -p 8080:8080 -v wheelfarm-cache:/var/cache/wheelfarm wheelfarm
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --system --uid 10001 --home-dir /var/lib/wheelfarm --create-home wheelfarm \
    && mkdir -p /var/cache/wheelfarm \
    && chown wheelfarm:wheelfarm /var/cache/wheelfarm

WORKDIR /opt/wheelfarm
COPY pyproject.toml constraints.txt README.md ./
COPY proxy ./proxy
COPY builder ./builder
RUN pip install -c constraints.txt . && rm -rf /root/.cache

USER wheelfarm
VOLUME ["/var/cache/wheelfarm"]
EXPOSE 8080
ENV WHEELFARM_SERVER_HOST=0.0.0.0 \
    WHEELFARM_SERVER_PORT=8080 \
    WHEELFARM_CACHE_DIR=/var/cache/wheelfarm \
    WHEELFARM_LOGGING_FORMAT=json
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]
ENTRYPOINT ["wheelfarm"]
CMD ["serve"]
