"""The dashboard as an ASGI application (SPEC §25).

::

    from gen_durable.dashboard import create_app
    app.mount("/ops", create_app(dsn, schema="public"))   # any Starlette/FastAPI host

Server-rendered pages (Jinja2, autoescaped) with htmx served from the package for the
auto-refresh, so it works offline. The engine behind it is a pure client
(``queues={}``), opened on the first request — a mounted app gets no lifespan events
of its own — or passed in by a host that already has one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from .._dsn import resolve_dsn, without_jit
from ..engine import Engine
from ..errors import GenDurableError
from . import reads
from .actions import ACTIONS, ActionRefused
from .security import CSRF_COOKIE, CSRF_FIELD, Auth, csrf_ok, new_csrf

HERE = Path(__file__).parent
REFRESH_SECONDS = 5


class Dashboard:
    """The state one dashboard app shares between requests."""

    def __init__(self, dsn: str | None, schema: str, engine: Engine | None) -> None:
        self._dsn, self._schema = dsn, schema
        self._engine = engine
        self._owned = engine is None
        self._lock = asyncio.Lock()

    async def engine(self) -> Engine:
        async with self._lock:
            if self._engine is None:
                dsn = without_jit(resolve_dsn(self._dsn))
                engine = Engine(dsn, queues={}, schema=self._schema, pool_size=4)
                await engine.start()
                self._engine = engine
            return self._engine

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        yield
        await self.close()

    async def close(self) -> None:
        if self._owned and self._engine is not None:
            await self._engine.stop()
            self._engine = None


def create_app(
    dsn: str | None = None,
    *,
    schema: str = "public",
    engine: Engine | None = None,
    read_only: bool = False,
    auth: str | None = None,
    token: str | None = None,
) -> Guard:
    """The dashboard for one schema. ``auth`` is ``"user:password"`` for HTTP Basic,
    ``token`` a bearer token; ``read_only`` hides and refuses every action."""
    if auth is not None and ":" not in auth:
        raise GenDurableError("auth must be 'user:password'")
    state = Dashboard(dsn, schema, engine)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.globals.update(pretty=reads.pretty, refresh=REFRESH_SECONDS, read_only=read_only)
    pages = Pages(state, env, read_only)
    app = Starlette(
        routes=[
            Route("/", pages.overview),
            Route("/instances", pages.listing),
            Route("/instances/{id}", pages.detail),
            Route("/instances/{id}/{action}", pages.act, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        lifespan=state.lifespan,
    )
    return Guard(app, Auth(auth, token), state)


class Guard:
    """Authentication in front of every route, static files included."""

    def __init__(self, app: ASGIApp, auth: Auth, dashboard: Dashboard) -> None:
        self.app, self.auth = app, auth
        self.dashboard = dashboard
        """The shared state; ``await app.dashboard.close()`` closes its engine."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.auth.required:
            header = dict(scope.get("headers") or ()).get(b"authorization")
            if not self.auth.allows(header.decode("latin-1") if header else None):
                refused = PlainTextResponse(
                    "authentication required",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="gen_durable"'},
                )
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Pages:
    def __init__(self, state: Dashboard, env: jinja2.Environment, read_only: bool) -> None:
        self.state, self.env, self.read_only = state, env, read_only

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or new_csrf()
        root = request.scope.get("root_path", "").rstrip("/")
        html = self.env.get_template(name).render(
            root=root, csrf=csrf, csrf_field=CSRF_FIELD, request=request, **context
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self' 'unsafe-inline'"
        )
        response.headers["X-Frame-Options"] = "DENY"
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/")
        return response

    async def overview(self, request: Request) -> Response:
        engine = await self.state.engine()
        return self.render(request, "overview.html", view=await reads.overview(engine))

    async def listing(self, request: Request) -> Response:
        query = dict(request.query_params)
        try:
            filters = reads.parse_filters(query)
            before = reads.parse_id(query["before"]) if query.get("before") else None
        except reads.BadFilter as exc:
            return self.render(
                request, "list.html", 400, rows=[], filters=query, error=str(exc), more=None
            )
        rows = await reads.page(await self.state.engine(), filters, before)
        more = rows[-1].id if len(rows) == reads.PAGE else None
        return self.render(request, "list.html", rows=rows, filters=query, error=None, more=more)

    async def detail(self, request: Request, message: str | None = None) -> Response:
        try:
            instance_id = reads.parse_id(request.path_params["id"])
        except reads.BadFilter as exc:
            return self.render(request, "missing.html", 404, error=str(exc))
        found = await reads.detail(await self.state.engine(), instance_id)
        if found is None:
            return self.render(request, "missing.html", 404, error=f"no instance {instance_id}")
        actions = [] if self.read_only else [a for a in ACTIONS.values() if a.applies(found.row)]
        return self.render(request, "detail.html", d=found, actions=actions, message=message)

    async def act(self, request: Request) -> Response:
        if self.read_only:
            return PlainTextResponse("the dashboard is read-only", status_code=403)
        form = await request.form()
        if not csrf_ok(request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD)):
            return PlainTextResponse("missing or wrong CSRF token", status_code=403)
        action = ACTIONS.get(request.path_params["action"])
        if action is None:
            return PlainTextResponse("unknown action", status_code=404)
        try:
            instance_id = reads.parse_id(request.path_params["id"])
        except reads.BadFilter as exc:
            return self.render(request, "missing.html", 404, error=str(exc))
        engine = await self.state.engine()
        row = await engine.get(instance_id)
        if row is None:
            return self.render(request, "missing.html", 404, error=f"no instance {instance_id}")
        try:
            if not action.applies(row):
                raise ActionRefused(f"{action.name} does not apply to a {row.status} instance")
            message = await action.perform(engine, row, form)
        except (ActionRefused, GenDurableError, ValueError, TypeError) as exc:
            return await self._after(request, instance_id, f"refused: {exc}", 400)
        return await self._after(request, instance_id, message, 200)

    async def _after(
        self, request: Request, instance_id: int, message: str, status: int
    ) -> Response:
        found = await reads.detail(await self.state.engine(), instance_id)
        if found is None:  # the action deleted it
            return self.render(request, "missing.html", status, error=message, deleted=True)
        response = await self.detail(request, message)
        response.status_code = status
        return response
