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


def test_graph_reads_a_dispatcher_by_its_branches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "tests.graph_machines:Dispatcher"]) == 0
    assert capsys.readouterr().out == (
        "stateDiagram-v2\n"
        "    [*] --> start\n"
        "    check\n"
        "    finish\n"
        "    end\n"
        "    start --> check: Next\n"
        "    check --> finish: Next\n"
        "    check --> check: Await go\n"
        "    finish --> [*]: Done\n"
        "    end --> [*]: Done\n"
    )


def test_graph_refuses_what_it_cannot_draw(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", "tests.graph_machines:Mail"]) == 1
    assert "is a gd.Job" in capsys.readouterr().err
    assert main(["graph", "tests.graph_machines:Nothing"]) == 1
    assert "Nothing" in capsys.readouterr().err
