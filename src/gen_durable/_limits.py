"""The rate-limit calls of the client (SPEC §23): the buckets every node enforces live
in the database, so configuring one is a statement, not a node setting."""

from __future__ import annotations

import typing
from typing import Any, TypeVar

import psycopg

from ._db.queries import Queries, Stmt
from ._db.statements.flow import Deleted
from .flow import RateLimit, bucket, limit_name

R = TypeVar("R")


def set_limit(
    queries: Queries, name: str, rate: float, per: float, burst: float | None
) -> Stmt[RateLimit]:
    """The checked statement of ``set_rate_limit``, for both clients: bad input raises
    ``ConfigurationError`` before anything runs."""
    r, p, b = bucket(rate, per, burst)
    return queries.set_rate_limit(limit_name(name), r, p, b)


def delete_limit(queries: Queries, name: str) -> Stmt[Deleted]:
    """The checked statement of ``delete_rate_limit``, for both clients."""
    return queries.delete_rate_limit(limit_name(name))


class Limits:
    queries: Queries

    async def _one(  # pragma: no cover - Engine's
        self, stmt: Stmt[R], conn: psycopg.AsyncConnection[Any] | None
    ) -> R | None:
        raise NotImplementedError

    async def _all(self, stmt: Stmt[R]) -> list[R]:  # pragma: no cover - Engine's
        raise NotImplementedError

    async def set_rate_limit(
        self, name: str, rate: float, *, per: float = 1.0, burst: float | None = None
    ) -> RateLimit:
        """Create or change the token bucket ``name`` that every node enforces (SPEC §23):
        ``rate`` starts per ``per`` seconds, up to ``burst`` at once (default: the
        rate). Rows opt in with ``rate_limit="name"`` or ``"name:part"``."""
        stmt = set_limit(self.queries, name, rate, per, burst)
        return typing.cast(RateLimit, await self._one(stmt, None))

    async def delete_rate_limit(self, name: str) -> bool:
        """Delete a rate limit (True if it existed); its rows are held until it is set."""
        return await self._one(delete_limit(self.queries, name), None) is not None

    async def rate_limits(self) -> list[RateLimit]:
        """Every configured rate limit, by name."""
        return await self._all(self.queries.rate_limits())
