"""ConfigMap ``<name>-config``: the app's non-secret settings, loaded by every app container with envFrom.

The variable names are the app's contract (docs/app.md). Secrets never go here: they are wired into the
containers with ``secretKeyRef`` (see deployment.py).
"""

from __future__ import annotations

from aperag_operator.builders.common import Instance, Obj, child_name, finalize, metadata


def name(inst: Instance) -> str:
    return child_name(inst, "config")


def settings(inst: Instance) -> dict[str, str]:
    """The operator-derived settings, then the user's ``spec.app.config`` (which wins)."""
    spec = inst.spec
    data: dict[str, str] = {
        "LOG_LEVEL": spec.app.log_level,
        "OBJECT_STORE_TYPE": spec.object_storage.type,
        "HF_HUB_OFFLINE": "1",
    }
    if spec.object_storage.type == "local":
        data["OBJECT_STORE_LOCAL_ROOT_DIR"] = spec.object_storage.local.mount_path
    elif spec.object_storage.s3 is not None:
        s3 = spec.object_storage.s3
        data["OBJECT_STORE_S3_BUCKET"] = s3.bucket
        data["OBJECT_STORE_S3_USE_PATH_STYLE"] = "true" if s3.use_path_style else "false"
        if s3.endpoint:
            data["OBJECT_STORE_S3_ENDPOINT"] = s3.endpoint
        if s3.region:
            data["OBJECT_STORE_S3_REGION"] = s3.region
        if s3.prefix:
            data["OBJECT_STORE_S3_PREFIX_PATH"] = s3.prefix
    if spec.observability.otlp_endpoint:
        data["OTEL_EXPORTER_OTLP_ENDPOINT"] = spec.observability.otlp_endpoint
    data.update(spec.app.config)
    return data


def build(inst: Instance) -> Obj:
    return finalize(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(inst, name(inst), "config"),
            "data": settings(inst),
        }
    )
