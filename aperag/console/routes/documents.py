"""The collection's documents page(s)."""

from __future__ import annotations

from fastapi import APIRouter

from aperag.console import deps

router = APIRouter(dependencies=deps.SIGNED_IN)
