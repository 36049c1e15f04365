"""Writing a run to a folder: tidy tables, the comparison with published figures, a manifest, and
each replication's tables as soon as it finishes.

Files are written to a temporary name and renamed, so a folder never holds a half-written file.
A run with `--out DIR` saves every finished replication under `DIR/.parts/` (one Parquet file per
table, then a small marker naming them) next to `spec.json`, what must match for `--resume` to
reuse them: the kind of run, the scenario and its sha256, the seed and the vbp version. A write
that fails (disk full, quota, read-only) stops the run with one message naming the file and how
many replications are saved.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

import pandas as pd
import tomli_w

from vbp import __version__
from vbp.errors import InputError, SimulationError

__all__ = ["versions", "write_run", "atomic_write_text", "atomic_frame", "prepare_out_dir", "PARTS", "run_spec",
           "open_parts", "load_parts", "save_part", "count_parts", "write_failure"]

PARTS = ".parts"  # folder of saved replications inside a run folder
_SPEC = "spec.json"
_REASONS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}
_WHY = {"scenario_sha256": " (the scenario file, a --set value or the calibration differs)",
        "vbp_version": " (saved replications are reused only by the version that ran them)"}


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


def write_failure(exc: OSError, path: Path, hint: str = "") -> SimulationError:
    """A one-line error for a failed write: the file, the reason ("disk full" for ENOSPC), a hint."""
    code = exc.errno
    if code is None:  # some writers put the errno only in the text
        found = re.search(r"\[errno (\d+)\]", str(exc), flags=re.I)
        code = int(found.group(1)) if found else None
    reason = _REASONS.get(code) or exc.strerror or str(exc) or type(exc).__name__
    text = f"cannot write {path}: {reason}" + (f"; {hint}" if hint else "")
    return SimulationError(" ".join(text.split()))


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


def atomic_frame(df: pd.DataFrame, path: Path) -> None:
    """Write a table (Parquet or CSV by suffix) through a temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        else:
            df.to_csv(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_run(out: Path, *, kind: str, scenario, seed: int, replications: int, frames: dict,
              tables: dict[str, pd.DataFrame], summary: dict, wall_s: float, extra: dict | None = None,
              hint: str = "") -> None:
    """Write records (Parquet), summary tables (CSV), summary.json, scenario.toml and manifest.json.

    A failed write raises `SimulationError` naming the file, followed by `hint`.
    """
    path = out
    try:
        for name, df in frames.items():
            path = out / f"{name}.parquet"
            atomic_frame(df, path)
        for name, df in tables.items():
            path = out / f"{name}.csv"
            atomic_frame(df, path)
        path = out / "summary.json"
        atomic_write_text(path, json.dumps(summary, indent=2, default=_json_default) + "\n")
        path = out / "scenario.toml"
        atomic_write_text(path, tomli_w.dumps(_toml_safe(scenario.model_dump(mode="json"))))
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
        path = out / "manifest.json"
        atomic_write_text(path, json.dumps(manifest, indent=2, default=_json_default) + "\n")
    except OSError as exc:
        raise write_failure(exc, path, hint) from None


# ---------------------------------------------------------------------------------------------
# Saved replications (DIR/.parts)


def run_spec(kind: str, scenario, seed: int) -> dict:
    """What saved replications must share with a run to be reused by it (the count is not part of
    it: a resumed run may ask for more replications)."""
    return {"kind": kind, "vbp_version": __version__, "scenario": scenario.name,
            "scenario_sha256": scenario.digest(), "seed": seed}


def open_parts(out: Path, spec: dict, *, resume: bool) -> Path:
    """Ready `out/.parts` for a run and return it.

    With `resume`, saved replications are kept if the folder's spec equals `spec`, and any field
    that differs stops the run (`InputError` naming it, both values and what to do). Without it,
    whatever was saved is removed: a fresh run never reuses replications silently.
    """
    parts = out / PARTS
    old = _read_spec(parts) if resume else None
    for key, new in spec.items():
        if old is not None and old.get(key) != new:
            raise InputError(f"cannot resume: the replications saved here have {key} {_shown(old.get(key))}, "
                             f"this run asks for {_shown(new)}{_WHY.get(key, '')}; choose a new --out folder, "
                             "or drop --resume to start afresh in this one", file=str(out), field=key, value=new)
    path = parts / _SPEC
    try:
        if old is None and parts.exists():
            path.unlink(missing_ok=True)  # first, so a clearing cut short leaves nothing reusable
            shutil.rmtree(parts)
        parts.mkdir(exist_ok=True)
        for tmp in parts.glob(".*.tmp"):  # left by a run killed while writing
            tmp.unlink()
        atomic_write_text(path, json.dumps(spec, indent=2) + "\n")
    except OSError as exc:  # name the file that failed: clearing touches others than spec.json
        raise write_failure(exc, Path(exc.filename) if exc.filename else path, "no replication has run yet") from None
    return parts


def _read_spec(parts: Path) -> dict | None:
    """The spec of saved replications, or None when nothing reusable is saved."""
    path = parts / _SPEC
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the saved run's spec ({exc}); choose a new --out folder, or drop "
                         "--resume to start afresh", file=str(path), field="--resume") from None
    if not isinstance(doc, dict):
        raise InputError("the saved run's spec is not a JSON object; choose a new --out folder, or drop "
                         "--resume to start afresh", file=str(path), field="--resume")
    return doc


def _shown(value) -> str:
    return json.dumps(value) if isinstance(value, str) or value is None else str(value)


def _stem(rep: int) -> str:
    return f"r{rep:06d}"


def save_part(parts: Path, rep: int, frames: dict[str, pd.DataFrame], timing: dict[str, float], *,
              total: int) -> None:
    """Save one finished replication: each table, then a marker naming them, so a replication is
    on disk complete or not at all. A failed write raises `SimulationError` naming the file, the
    reason, how many of `total` replications are saved, and that `--resume` completes the work."""
    path = parts
    try:
        for name, df in frames.items():
            path = parts / f"{_stem(rep)}.{name}.parquet"
            atomic_frame(df, path)
        path = parts / f"{_stem(rep)}.json"
        atomic_write_text(path, json.dumps({"rep": rep, "tables": list(frames), "timing": timing}) + "\n")
    except OSError as exc:
        first = "free some space, then rerun" if exc.errno == errno.ENOSPC else "rerun"
        raise write_failure(exc, path, f"{count_parts(parts, total)} of {total} replications are saved in "
                                       f"{parts}; {first} the same command with --resume to complete the "
                                       "work") from None


def count_parts(parts: Path, total: int) -> int:
    """Replications among 0..total-1 saved complete (their marker written)."""
    try:
        names = set(os.listdir(parts))
    except OSError:
        return 0
    return sum(f"{_stem(rep)}.json" in names for rep in range(total))


def load_parts(parts: Path, total: int) -> list[tuple[int, dict[str, pd.DataFrame], dict[str, float]]]:
    """Read back the saved replications among 0..total-1 as (rep, frames, timing).

    A replication with a missing or unreadable file is left out, to be run again: it is a pure
    function of the spec, so rerunning it gives the same tables.
    """
    try:
        names = set(os.listdir(parts))
    except OSError:
        return []
    out = []
    for rep in range(total):
        if f"{_stem(rep)}.json" not in names:
            continue
        try:
            doc = json.loads((parts / f"{_stem(rep)}.json").read_text(encoding="utf-8"))
            frames = {name: pd.read_parquet(parts / f"{_stem(rep)}.{name}.parquet") for name in doc["tables"]}
            timing = {str(k): float(v) for k, v in doc.get("timing", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        out.append((rep, frames, timing))
    return out


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
