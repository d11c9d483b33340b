"""Machines for the ``gen-durable graph`` tests (imported by module:Class)."""

from __future__ import annotations

import gen_durable as gd


class Article(gd.FSM, name="tests.graph.article", initial="draft"):
    @gd.step
    async def draft(self, ctx: gd.Context) -> gd.Outcome:
        if not any(s.name == "approved" for s in ctx.signals):
            return gd.Await("approved", ctx.state)
        return gd.Next(Article.publish, ctx.state)

    @gd.step
    def publish(self, ctx: gd.Context) -> gd.Outcome:
        return gd.ScheduleChilds(Article.announced, [], ctx.state)

    @gd.step
    def announced(self, ctx: gd.Context) -> gd.Outcome:
        if ctx.childs and ctx.childs[0].status == "failed":
            return gd.Stop("announcement failed")
        return gd.Done()


class Dispatcher(gd.FSM, name="tests.graph.dispatcher"):
    def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        if step == "start":
            return gd.Next("check", ctx.state)
        match step:
            case "check":
                if ctx.signals:
                    return gd.Next("finish", ctx.state)
                return gd.Await("go", ctx.state)
            case "finish" | "end":
                return gd.Done()
        return gd.Stop(f"unknown step {step!r}")


class Mail(gd.Job, name="tests.graph.mail"):
    def perform(self, args: dict[str, str]) -> None:
        return None
