"""The documentation: the README stays a landing page whose links resolve, and the pages generated
at build time (``docs/_ext/ntk_docs.py``) hold every column, status, rule and option of the code
they are generated from. (The site itself is built, with warnings as errors, and rendered in
Chromium by ``.ci/run``.)"""
import re
import sys
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))

import ntk_docs  # noqa: E402

from ntk_bridge import cli  # noqa: E402
from ntk_bridge.fewshot.tables import RESULT_COLUMNS  # noqa: E402
from ntk_bridge.metrics import COLUMNS, STATUSES  # noqa: E402
from ntk_bridge.verify.claims import RULES  # noqa: E402


def rows(markdown: str) -> list[list[str]]:
    """The body cells of a Markdown table, ``\\|`` kept inside a cell."""
    out = []
    for line in markdown.splitlines()[2:]:
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        out.append([c.strip().replace(r"\|", "|") for c in cells])
    return out


def test_readme_is_a_landing_page_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert text.count("<!-- quickstart:begin -->") == 1 and text.count("<!-- quickstart:end -->") == 1
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not link.startswith("http")]
    assert local and all((ROOT / link).exists() for link in local), [link for link in local if not (ROOT / link).exists()]


def test_schema_pages_are_the_metrics_module():
    pages = ntk_docs.schema_pages()
    columns = rows(pages["columns.md"])
    assert [c[0] for c in columns] == [f"`{c.name}`" for c in COLUMNS]
    assert [c[2] for c in columns] == [c.meaning for c in COLUMNS]  # '|' of the norms escaped, not lost
    assert [s[0] for s in rows(pages["statuses.md"])] == [f"`{s}`" for s in STATUSES]
    assert [r[0] for r in rows(pages["rules.md"])] == [f"`{c}`" for c in RULES]
    assert [r[0] for r in rows(pages["fewshot-columns.md"])] == [f"`{c}`" for c in RESULT_COLUMNS]


def test_cells_escape_what_markdown_would_eat():
    assert ntk_docs.cell("`||F||` of mtl_<status> and lambda*tau") == r"`\|\|F\|\|` of mtl_&lt;status&gt; and lambda\*tau"


@pytest.mark.parametrize("name", ntk_docs.COMMANDS)
def test_cli_pages_list_every_option_and_example(name):
    page = ntk_docs.cli_pages()[f"cli-{name}.md"]
    command = typer.main.get_command(cli.app).commands[name]
    for param in command.params:
        if isinstance(param, typer.core.TyperOption):
            for flag in (*param.opts, *param.secondary_opts):
                assert f"`{flag}`" in page, (name, flag)
    from ntk_bridge.clihelp import EXAMPLES

    for line, _ in EXAMPLES[name]:
        assert line in page


def test_every_docs_page_is_in_a_toctree():
    docs = ROOT / "docs"
    listed = set()
    for page in docs.glob("*.md"):
        for block in re.findall(r"```\{toctree\}(.*?)```", page.read_text(), flags=re.S):
            listed |= {line.strip() for line in block.splitlines() if line.strip() and not line.startswith(":")}
    pages = {p.stem for p in docs.glob("*.md")} - {"index", "README"}
    assert pages <= listed, pages - listed
