"""Writing a run to a folder: tidy tables, the comparison with published figures, a manifest.

Files are written to a temporary name and renamed, so a folder never holds a half-written file.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pandas as pd
import tomli_w

from vbp import __version__
from vbp.errors import InputError

__all__ = ["versions", "write_run", "atomic_write_text", "prepare_out_dir"]


def versions() -> dict[str, str]:
    """Versions of Python, vbp and the libraries that shape results."""
    out = {"python": platform.python_version(), "vbp": __version__}
    for pkg in ("numpy", "scipy", "pandas", "simpy", "pulp", "highspy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:  # pragma: no cover
            out[pkg] = "missing"
    return out


def prepare_out_dir(path: str | Path) -> Path:
    """Create the output folder or fail with a clear message before any work is done."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".vbp-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to the output folder {str(p)!r}: {exc.strerror or exc}",
                         field="--out", value=str(p)) from None
    return p


def atomic_write_text(path: Path, text: str) -> None:
    """Write text to `path` through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_frame(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        df.to_parquet(tmp, index=False)
    else:
        df.to_csv(tmp, index=False)
    os.replace(tmp, path)


def write_run(out: Path, *, kind: str, scenario, seed: int, replications: int, frames: dict,
              tables: dict[str, pd.DataFrame], summary: dict, wall_s: float, extra: dict | None = None) -> None:
    """Write records (Parquet), summary tables (CSV), summary.json, scenario.toml and manifest.json."""
    for name, df in frames.items():
        _atomic_frame(df, out / f"{name}.parquet")
    for name, df in tables.items():
        _atomic_frame(df, out / f"{name}.csv")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=_json_default) + "\n")
    atomic_write_text(out / "scenario.toml", tomli_w.dumps(_toml_safe(scenario.model_dump(mode="json"))))
    manifest = {
        "kind": kind,
        "scenario": scenario.name,
        "scenario_sha256": scenario.digest(),
        "seed": seed,
        "replications": replications,
        "wall_s": round(wall_s, 3),
        "versions": versions(),
        "command": " ".join(["vbp", *sys.argv[1:]]),
        "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
        **(extra or {}),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=2, default=_json_default) + "\n")


def _toml_safe(obj):
    """Drop None values (TOML has no null) recursively."""
    if isinstance(obj, dict):
        return {k: _toml_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_toml_safe(v) for v in obj]
    return obj


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)
