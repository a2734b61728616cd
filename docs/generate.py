"""Write the generated documentation pages: the CLI reference (from the commands themselves) and the site's
home page (the README, its links rewritten for docs/). `python docs/generate.py` rewrites them;
tests/test_docs.py fails when a committed page differs from what this writes."""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent


def cli_reference() -> str:
    import click

    from deploykit.cli import cli

    lines = ["# CLI reference", "",
             "Generated from the commands by `python docs/generate.py`: every verb, every option, its default.",
             "The prose for each verb is in its page under [cli/](../commands.md).", ""]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        ctx = click.Context(command, info_name=name, parent=click.Context(cli, info_name="deploykit"))
        lines += [f"## deploykit {name}", "", (command.help or "").strip().splitlines()[0], "", "```",
                  command.get_usage(ctx).strip(), "```", "", "| option | default | what it does |",
                  "| --- | --- | --- |"]
        for param in command.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:  # arguments have none
                continue
            flags, help_text = record
            default = ""
            found = re.search(r"\s*\[(default: [^\]]*)\]\s*$", help_text)
            if found:
                default, help_text = found.group(1).removeprefix("default: "), help_text[:found.start()]
            cell = lambda text: text.replace("|", "\\|").strip()  # noqa: E731
            lines.append(f"| `{cell(flags)}` | {cell(default)} | {cell(help_text)} |")
        lines.append("")
    return "\n".join(lines)


def home_page() -> str:
    """README.md as docs/index.md: links into docs/ lose the prefix, links elsewhere in the repository gain ../."""
    text = (ROOT / "README.md").read_text()

    def relink(match):
        target = match.group(1)
        if re.match(r"[a-z]+:|#|/", target):
            return match.group(0)
        return "](" + (target.removeprefix("docs/") if target.startswith("docs/") else "../" + target) + ")"

    return re.sub(r"\]\(([^)\s]+)\)", relink, text)


PAGES = {"reference/cli.md": cli_reference, "index.md": home_page}


def main(check: bool = False) -> int:
    stale = []
    for relative, make in PAGES.items():
        path, text = DOCS / relative, make()
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(relative)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run python docs/generate.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(check="--check" in sys.argv))
