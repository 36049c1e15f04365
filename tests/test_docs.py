"""The commands of the tutorial and the rulebook how-to run as written, from the repository root.

Each ```bash block is split into commands (backslash continuations joined, heredocs kept whole);
installation and cluster lines are skipped. A plain `vbp ...` command runs as
[sys.executable, "-m", "vbp", ...], so the installed package is tested; a command using the shell
(heredoc, redirection, pipe) runs under bash with `vbp` defined the same way. The working
directory is a temporary copy of what the commands read.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ("docs/tutorial.md", "docs/howto-add-rulebook.md")
SKIP = ("pip ", "python3 -m venv", ". ", "source ", "dask scheduler", "dask worker")
SHELL_CHARS = re.compile(r"<<|[|&;<>]|\$\(|`")
NEEDED = ("tests/data/tiny.toml", "experiments/forecasts")
TIMEOUT_S = 120


def bash_blocks(text: str) -> list[str]:
    """Contents of the ```bash fenced blocks of a Markdown page, in order."""
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[str]:
    """Commands of one block: comments and skipped lines dropped, continuations joined, each
    heredoc kept with its command."""
    lines = block.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        while line.endswith("\\") and i < len(lines):
            line = line[:-1] + " " + lines[i].strip()
            i += 1
        if not line or line.startswith("#") or line.startswith(SKIP):
            continue
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
        if heredoc:
            body = []
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                body.append(lines[i])
                i += 1
            i += 1  # the terminator
            line = "\n".join([line, *body, heredoc.group(1)])
        out.append(line)
    return out


def page_commands() -> list[tuple[str, str]]:
    """(page, command) for every command of the tested pages, in page order."""
    found = []
    for page in PAGES:
        for block in bash_blocks((ROOT / page).read_text(encoding="utf-8")):
            found += [(page, cmd) for cmd in commands(block)]
    return found


def run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run one documented command in `cwd` with this interpreter's vbp."""
    env = {**os.environ, "COLUMNS": "120", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    if SHELL_CHARS.search(cmd):
        prelude = f'set -e\nvbp() {{ {shlex.quote(sys.executable)} -m vbp "$@"; }}\n'
        argv = ["bash", "-c", prelude + cmd]
    else:
        argv = shlex.split(cmd)
        if argv[0] == "vbp":
            argv = [sys.executable, "-m", "vbp", *argv[1:]]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)


def test_parser_keeps_heredocs_and_skips_install_lines():
    block = ("python3 -m venv .venv\n. .venv/bin/activate\npip install .\n# comment\n"
             "cat > a.toml <<'EOF'\nx = 1\nEOF\nvbp run a.toml \\\n  -n 2\n")
    assert commands(block) == ["cat > a.toml <<'EOF'\nx = 1\nEOF", "vbp run a.toml  -n 2"]


def test_pages_have_commands():
    cmds = page_commands()
    assert {page for page, _ in cmds} == set(PAGES)
    assert sum(cmd.startswith("vbp ") for _, cmd in cmds) >= 10


def test_every_documented_command_runs(tmp_path):
    """Commands of both pages in order, in one folder laid out like the repository root."""
    for rel in NEEDED:
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    failures = []
    for page, cmd in page_commands():
        proc = run(cmd, tmp_path)
        if proc.returncode != 0:
            failures.append(f"{page}: {cmd.splitlines()[0]}\nexit {proc.returncode}\n"
                            f"{proc.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)

