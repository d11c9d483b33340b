"""``gen-durable graph``: Mermaid from a machine's source (SPEC §26)."""

from __future__ import annotations

import pytest

from gen_durable.cli import main

EXPECTED = """\
stateDiagram-v2
    [*] --> draft
    publish
    announced
    draft --> draft: Await approved
    draft --> publish: Next
    publish --> announced: ScheduleChilds
    announced --> [*]: Stop
    announced --> [*]: Done
"""


def test_graph_prints_the_machine_as_mermaid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "tests.graph_machines:Article"]) == 0
    assert capsys.readouterr().out == EXPECTED
    # A registered name finds the same class.
    assert main(["graph", "tests.graph.article"]) == 0
    assert capsys.readouterr().out == EXPECTED


def test_graph_refuses_what_it_cannot_draw(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "tests.graph_machines:Dispatcher"]) == 1
    assert "graph draws machines written with @gd.step methods" in capsys.readouterr().err
    assert main(["graph", "tests.graph_machines:Nothing"]) == 1
    assert "Nothing" in capsys.readouterr().err
