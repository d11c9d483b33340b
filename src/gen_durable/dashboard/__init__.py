"""The web dashboard (SPEC §25), in the ``gen_durable[dashboard]`` extra.

Not imported by ``import gen_durable``: only ``gen-durable dashboard`` and a host that
mounts :func:`create_app` load Starlette and Jinja2.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
