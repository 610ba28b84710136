"""Argo CD's resource health checks (docs/argocd/<group>/<kind>/health.lua) run as Argo CD runs them.

Argo CD runs a health script in gopher-lua (Lua 5.1) with the resource as the global ``obj`` and reads
the table it returns (``status``, ``message``). Here the same script runs in Lua 5.1 through lupa (the
Lua runtime from PyPI), in an environment without the libraries Argo CD does not give a script (io,
os, file loading, debug), so a script that would fail in Argo CD fails here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD_DIR = ROOT / "docs" / "argocd"
#: Argo CD's health statuses (gitops-engine's health.HealthStatusCode).
STATUSES = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})
_SANDBOX = "io = nil; os = nil; debug = nil; require = nil; dofile = nil; loadfile = nil; load = nil; loadstring = nil"


def script_path(group: str, kind: str) -> Path:
    return ARGOCD_DIR / group / kind / "health.lua"


def _to_lua(lua: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    return value


def health(group: str, kind: str, obj: dict[str, Any]) -> dict[str, str]:
    """The health Argo CD would show for ``obj``: ``{"status": ..., "message": ...}``."""
    import lupa.lua51 as lua51

    lua = lua51.LuaRuntime(unpack_returned_tuples=True, register_eval=False)
    lua.execute(_SANDBOX)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script_path(group, kind).read_text())
    if result is None:
        raise AssertionError(f"{script_path(group, kind)} returned nothing for {obj.get('metadata', {}).get('name')}")
    out = {str(k): str(v) for k, v in result.items()}
    if out.get("status") not in STATUSES:
        raise AssertionError(f"not an Argo CD health status: {out}")
    return out


def kinds() -> list[tuple[str, str]]:
    """Every (group, kind) with a health script."""
    return sorted((p.parent.parent.name, p.parent.name) for p in ARGOCD_DIR.glob("*/*/health.lua"))


def test_cases(group: str, kind: str) -> list[dict[str, Any]]:
    """The cases of ``health_test.yaml`` (Argo CD's format: ``inputPath`` and the expected ``healthStatus``)."""
    path = script_path(group, kind).parent / "health_test.yaml"
    cases: list[dict[str, Any]] = yaml.safe_load(path.read_text())["tests"]
    return cases


CM_FILE = ARGOCD_DIR / "argocd-cm.yaml"
_CM_HEADER = """\
# The argocd-cm entries that give Argo CD the health of ApeRAGs and KubeBlocks Clusters (docs/gitops.md).
# Merge them into your argocd-cm (kubectl -n argocd patch configmap argocd-cm --patch-file argocd-cm.yaml),
# or give each script to your Argo CD's Helm values (configs.cm). The scripts are the files beside this one
# (<group>/<kind>/health.lua, tested on the testdata/ the real operator wrote); a test keeps this copy
# equal to them (UPDATE_ARGOCD_CM=1 rewrites it).
"""


def argocd_cm() -> str:
    """The argocd-cm snippet holding every health script (``resource.customizations.health.<group>_<kind>``)."""
    lines = [
        _CM_HEADER.rstrip("\n"),
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "  labels:",
        "    app.kubernetes.io/name: argocd-cm",
        "    app.kubernetes.io/part-of: argocd",
        "data:",
    ]
    for group, kind in kinds():
        lines.append(f"  resource.customizations.health.{group}_{kind}: |")
        for line in script_path(group, kind).read_text().rstrip("\n").split("\n"):
            lines.append(f"    {line}" if line else "")
    return "\n".join(lines) + "\n"
