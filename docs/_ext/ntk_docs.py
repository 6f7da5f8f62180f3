"""Pages generated from the code at build time, so that nothing is typed twice.

* ``_generated/columns.md`` and ``_generated/statuses.md``: the results schema and the status
  vocabulary, from :data:`ntk_bridge.metrics.COLUMNS` and :data:`ntk_bridge.metrics.STATUSES`;
* ``_generated/rules.md``: how each claim's verdict is derived (:data:`ntk_bridge.verify.claims.RULES`);
* ``_generated/fewshot-columns.md``: the few-shot ``results.csv`` columns
  (:data:`ntk_bridge.fewshot.tables.RESULT_COLUMNS`);
* ``_generated/cli-<command>.md``: each command's options by help panel, defaults and help, and its
  examples, from the typer commands themselves (:mod:`ntk_bridge.cli`, :mod:`ntk_bridge.clihelp`);
* ``tutorials/*.ipynb``: copies of ``notebooks/*.ipynb``, which MyST-NB executes.

After the build, :func:`check_no_tensorflow` fails it if anything imported TensorFlow
(``ntk_bridge/runtime.py``).
"""
from __future__ import annotations

import os
import re
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.dirname(HERE)
ROOT = os.path.dirname(DOCS)
GENERATED = os.path.join(DOCS, "_generated")
TUTORIALS = os.path.join(DOCS, "tutorials")
COMMANDS = ("sweep", "verify", "fewshot", "figures")


def cell(text) -> str:
    """Text for a Markdown table cell: ``|`` escaped everywhere, ``<`` and ``*`` outside code spans."""
    parts = str(text).replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
    return "`".join(parts).replace("|", r"\|")


def table(header: tuple[str, ...], rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def schema_pages() -> dict[str, str]:
    from ntk_bridge.fewshot.tables import RESULT_COLUMNS
    from ntk_bridge.metrics import COLUMNS, STATUSES
    from ntk_bridge.verify.claims import RULES

    return {
        "columns.md": table(("column", "type", "meaning"), ((f"`{c.name}`", c.kind, c.meaning) for c in COLUMNS)),
        "statuses.md": table(("status", "meaning"), ((f"`{s}`", m) for s, m in STATUSES.items())),
        "rules.md": table(("claim", "how its verdict is derived"), ((f"`{c}`", r) for c, r in RULES.items())),
        "fewshot-columns.md": table(("column", "meaning"), ((f"`{c}`", m) for c, m in RESULT_COLUMNS.items())),
    }


def _default(param) -> str:
    if getattr(param, "is_flag", False) and param.secondary_opts:
        return param.opts[0] if param.default else param.secondary_opts[0]
    if param.default is None or param.default == () or param.default == []:
        return ""
    return f"`{param.default}`"


def cli_pages() -> dict[str, str]:
    import typer

    from ntk_bridge import cli
    from ntk_bridge.clihelp import EXAMPLES
    from ntk_bridge.config import PANELS

    group = typer.main.get_command(cli.app)
    pages = {}
    for name in COMMANDS:
        command = group.commands[name]
        text = [f"`ntk-bridge {name}`: {' '.join((command.help or '').split())}\n"]
        by_panel: dict[str, list] = {}
        for param in command.params:
            if not isinstance(param, typer.core.TyperOption):
                continue
            flags = " / ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
            by_panel.setdefault(param.rich_help_panel or "Options", []).append(
                (flags, _default(param), param.help or ""))
        for panel in [p for p in PANELS if p in by_panel] + [p for p in by_panel if p not in PANELS]:
            text.append(f"**{panel}**\n\n" + table(("option", "default", "meaning"), by_panel[panel]))
        text.append("**Examples**\n\n```bash\n" + "\n".join(f"{line:<70}  # {what}" for line, what in EXAMPLES[name])
                    + "\n```\n")
        pages[f"cli-{name}.md"] = "\n".join(text)
    return pages


def _write(path: str, text: str) -> None:
    """Write only when the text changed (Sphinx then rebuilds only what depends on it)."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def copy_tutorials() -> None:
    os.makedirs(TUTORIALS, exist_ok=True)
    notebooks = os.path.join(ROOT, "notebooks")
    for name in sorted(os.listdir(notebooks)):
        if re.fullmatch(r"\d\d_\w+\.ipynb", name):
            src, dst = os.path.join(notebooks, name), os.path.join(TUTORIALS, name)
            if not os.path.exists(dst) or open(src, "rb").read() != open(dst, "rb").read():
                shutil.copyfile(src, dst)


def generate(app=None) -> None:
    os.makedirs(GENERATED, exist_ok=True)
    for name, text in {**schema_pages(), **cli_pages()}.items():
        _write(os.path.join(GENERATED, name), text)
    copy_tutorials()


def check_no_tensorflow(app, exception) -> None:
    if exception is None:
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf2jax"))
        if loaded:
            raise RuntimeError(f"the documentation build imported TensorFlow ({', '.join(loaded[:3])}): "
                               "see ntk_bridge/runtime.py")


def plain_data_docstrings(app, what, name, obj, options, lines) -> None:
    """Napoleon reads a constant's first docstring line as ``type: description`` when it holds a
    colon; the package's ``#:`` comments are prose, so they start with an empty line (read first)."""
    if what in ("data", "attribute") and lines and re.search(r"(?<!:):(?!:)", lines[0]):
        lines.insert(0, "")


def setup(app):
    app.connect("autodoc-process-docstring", plain_data_docstrings, priority=400)
    app.connect("builder-inited", generate)
    app.connect("build-finished", check_no_tensorflow)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
