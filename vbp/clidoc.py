"""Render the command reference (docs/cli.md) from the click objects, so it is never retyped.

`python -m vbp.clidoc > docs/cli.md` regenerates it; a test checks the file is current.
"""

from __future__ import annotations

import click

from vbp.cli import cli

__all__ = ["render"]


def _walk(cmd: click.Command, path: list[str], parent: click.Context | None = None):
    ctx = click.Context(cmd, info_name=path[-1], parent=parent, **(cli.context_settings if parent is None else {}))
    yield path, cmd, ctx
    if isinstance(cmd, click.Group):
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], [*path, name], ctx)


def render() -> str:
    """Markdown reference of every command, its arguments and options."""
    lines = ["# Command reference", "",
             "Generated from the command definitions by `python -m vbp.clidoc`; do not edit by hand.", ""]
    for path, cmd, ctx in _walk(cli, ["vbp"]):
        lines += [f"## `{' '.join(path)}`", "", "```", cmd.get_usage(ctx), "```", ""]
        if cmd.help:
            lines += [cmd.help.strip(), ""]
        rows = []
        for p in cmd.get_params(ctx):
            if isinstance(p, click.Argument):
                rows.append((p.human_readable_name, "argument", ""))
                continue
            record = p.get_help_record(ctx)
            if record:
                rows.append((record[0].replace("|", "\\|"), "option", record[1].replace("|", "\\|")))
        if rows:
            lines += ["| name | kind | meaning |", "|---|---|---|"]
            lines += [f"| `{n}` | {k} | {h} |" for n, k, h in rows]
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
