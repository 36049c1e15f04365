"""Access to the packaged input data (the repository's `seeds/` folder).

The wheel ships `seeds/` as `vbp/_data`; a source checkout reads `seeds/` beside the package.
Tables here are facts with sources; the published outcomes (targets.toml) are kept apart from
the inputs (rounds.toml, rulebooks.toml, provinces.csv) and are never read by the simulation.
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["data_dir", "read_toml", "provinces", "Provinces", "scenario_dir", "embedded_scenarios"]


def data_dir() -> Path:
    """Folder holding rounds.toml, rulebooks.toml, targets.toml, provinces.csv, calibration.toml."""
    packaged = Path(str(resources.files("vbp"))) / "_data"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "seeds"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("vbp's data folder is missing: reinstall the package")


def scenario_dir() -> Path:
    """Folder of the embedded scenarios (TOML files named after the scenario)."""
    return Path(str(resources.files("vbp"))) / "scenarios"


def embedded_scenarios() -> list[str]:
    """Names of the embedded scenarios, sorted."""
    return sorted(p.stem for p in scenario_dir().glob("*.toml"))


@cache
def read_toml(name: str) -> dict:
    """Parse one packaged TOML table (cached; callers must not mutate the result)."""
    with open(data_dir() / name, "rb") as fh:
        return tomllib.load(fh)


@dataclass(frozen=True)
class Provinces:
    """The 31 provincial-level divisions: names, census population and capital coordinates."""

    name: tuple[str, ...]
    population: np.ndarray  # persons, 2020 census
    lat: np.ndarray  # degrees
    lon: np.ndarray  # degrees

    def weights(self, names: tuple[str, ...] | None = None) -> np.ndarray:
        """Population shares over `names` (all 31 when None), summing to 1."""
        idx = self.index(names)
        w = self.population[idx].astype(float)
        return w / w.sum()

    def index(self, names: tuple[str, ...] | None = None) -> np.ndarray:
        """Row numbers of `names` (all rows when None)."""
        if names is None:
            return np.arange(len(self.name))
        pos = {n: i for i, n in enumerate(self.name)}
        return np.array([pos[n] for n in names], dtype=int)

    def distance_km(self) -> np.ndarray:
        """Great-circle distances between capitals, km (31 x 31)."""
        lat, lon = np.radians(self.lat), np.radians(self.lon)
        dlat = lat[:, None] - lat[None, :]
        dlon = lon[:, None] - lon[None, :]
        a = np.sin(dlat / 2) ** 2 + np.cos(lat[:, None]) * np.cos(lat[None, :]) * np.sin(dlon / 2) ** 2
        return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@cache
def provinces() -> Provinces:
    """The province table (seeds/provinces.csv)."""
    with open(data_dir() / "provinces.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return Provinces(
        name=tuple(r["province"] for r in rows),
        population=np.array([int(r["population_2020_census"]) for r in rows]),
        lat=np.array([float(r["capital_lat"]) for r in rows]),
        lon=np.array([float(r["capital_lon"]) for r in rows]),
    )
