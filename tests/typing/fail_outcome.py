"""A wrong outcome type is refused."""

from __future__ import annotations

import gen_durable as gd


class Letter(gd.State):
    to: str


class Parcel(gd.State):
    weight: float = 0.0
    label: str = ""


class Post(gd.FSM[Parcel], initial="weigh"):
    @gd.step
    def weigh(self, ctx: gd.Context[Parcel]) -> gd.Outcome[Parcel]:
        if ctx.state.weight > 30:
            return gd.Next(Post.weigh, Letter(to="x"))  # E: Argument 2 to "Next" has incompatible
        if not ctx.state.label:
            return gd.Replay(Letter(to="y"))  # E: Argument 1 to "Replay" has incompatible type
        return "weigh"  # E: Incompatible return value type
