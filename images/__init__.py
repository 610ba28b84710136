"""Building and running the project's container images without Docker (buildah and podman)."""
