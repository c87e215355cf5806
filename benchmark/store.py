"""Atomic, resumable result store.

Layout of an output directory ``OUT``::

    OUT/run.json                          suite hash, suite TOML, versions, metric directions, skipped
    OUT/parts/<unit_key>__<hash>.parquet  score rows of one finished unit; its Parquet metadata holds
                                          the unit's timings and info (one file = one commit)
    OUT/curves/<unit_key>__<hash>.parquet the unit's mean curves (``CURVE_COLUMNS``, typed: ``CURVE_SCHEMA``;
                                          only when it has some)
    OUT/stats/<unit_key>__<hash>.parquet  per-image statistics of the unit's dataset-level metrics
                                          (``STATS_COLUMNS``; only when some ran)
    OUT/perturbed/<unit_key>__<hash>.parquet  scores under the meta-evaluation's perturbed models
                                          (``PERTURBED_COLUMNS``; only with ``meta_evaluation``)
    OUT/gallery/<unit_key>__<hash>.npz    images + every method's map for the first images (gallery)

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``
(atomic on POSIX and Windows), the gallery, the statistics and the curves before the part: a part on disk
means its unit is finished (a curves or statistics file without its part is an unfinished unit, not read;
its rerun replaces it). Parts written by earlier versions, which kept the curves as JSON in the part's
metadata (key ``curves``), are still read: such a directory resumes and reports. A rerun skips units
whose part carries the current suite hash. Parts with another hash (another suite, version or setting
such as ``n``) and parts of this hash outside the units asked for (a larger ``--limit``) are kept on
disk but not read (:meth:`Store.unreported`); ``fresh=True`` starts over.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import CambenchError
from .schema import CURVE_COLUMNS, PERTURBED_COLUMNS, SCORE_COLUMNS, STATS_COLUMNS, TIMING_COLUMNS, UnitResult

META_KEY = b"cambench"
_SEP = "__"
#: The Parquet types of a unit's mean curves (``CURVE_COLUMNS``): ``n`` is the unit's number of images.
CURVE_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("method", pa.string()),
        ("metric", pa.string()),
        ("step", pa.int64()),
        ("x", pa.float64()),
        ("value", pa.float64()),
        ("n", pa.int64()),
    ]
)


def file_mode() -> int:
    """The mode a newly created file gets under the current umask (``0o666 & ~umask``)."""
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    The file gets the mode of any new file under the umask (``mkstemp`` alone would leave it ``0600``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_parquet(path: Path, df: pd.DataFrame, meta: dict | None = None, schema: pa.Schema | None = None) -> None:
    """Atomically write ``df`` as Parquet, with ``meta`` (JSON) in the schema metadata; ``schema``: the
    column types to write (cast from ``df``'s; ``None``: inferred by pyarrow)."""
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    if meta is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def read_meta(path: Path) -> dict:
    md = pq.read_schema(path).metadata or {}
    return json.loads(md.get(META_KEY, b"{}"))


class Store:
    """The parts of one run in ``out_dir`` for suite hash ``suite_hash``.

    ``units``: the unit keys of the run that was asked for (``run.json``'s ``units``); reading then sees
    only their parts, so that a run with a smaller ``--limit`` or ``n`` into a directory that holds a larger
    one reports what it was asked for. The other parts of the same hash stay on disk
    (:meth:`unreported`) and are reported again by a run that asks for them. ``None``: every part.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        suite_hash: str,
        log: Callable[[str], None] | None = None,
        units: Iterable[str] | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.hash = suite_hash
        self.parts = self.out / "parts"
        self.gallery = self.out / "gallery"
        self.stats = self.out / "stats"
        self.curves = self.out / "curves"  # created by the first unit that has curves
        self.perturbed = self.out / "perturbed"  # created by the first unit that has such rows
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.units: frozenset[str] | None = None if units is None else frozenset(units)

    # -- lifecycle ---------------------------------------------------------------------------------
    def prepare(self, fresh: bool = False) -> None:
        """Create the folders; with ``fresh`` delete earlier results; drop stale parts and temp files."""
        if fresh:
            for d in (self.parts, self.gallery, self.stats, self.curves, self.perturbed, self.out / "plots"):
                if d.exists():
                    shutil.rmtree(d)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.gallery.mkdir(parents=True, exist_ok=True)
        self.stats.mkdir(parents=True, exist_ok=True)
        other = 0
        for folder in (self.parts, self.gallery, self.stats, self.curves, self.perturbed):
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.name.startswith(".") and f.name.endswith(".tmp"):
                    f.unlink(missing_ok=True)  # left by a killed writer
                elif folder is self.parts and f.is_file() and self._hash_of(f) != self.hash:
                    other += 1
        if other:
            self.log(
                f"cambench: {other} result part(s) in {self.parts} belong to other suite settings or versions "
                f"(current suite hash {self.hash}): kept, not reported; --fresh removes them."
            )

    @staticmethod
    def _hash_of(path: Path) -> str | None:
        stem = path.name
        for ext in (".parquet", ".npz"):
            stem = stem[: -len(ext)] if stem.endswith(ext) else stem
        return stem.rsplit(_SEP, 1)[1] if _SEP in stem else None

    def part_path(self, key: str) -> Path:
        return self.parts / f"{key}{_SEP}{self.hash}.parquet"

    def stats_path(self, key: str) -> Path:
        return self.stats / f"{key}{_SEP}{self.hash}.parquet"

    def curves_path(self, key: str) -> Path:
        return self.curves / f"{key}{_SEP}{self.hash}.parquet"

    def perturbed_path(self, key: str) -> Path:
        return self.perturbed / f"{key}{_SEP}{self.hash}.parquet"

    def gallery_path(self, key: str) -> Path:
        return self.gallery / f"{key}{_SEP}{self.hash}.npz"

    def done(self) -> set[str]:
        """Keys of the units already finished for this suite hash."""
        if not self.parts.is_dir():
            return set()
        suffix = f"{_SEP}{self.hash}.parquet"
        return {f.name[: -len(suffix)] for f in self.parts.iterdir() if f.name.endswith(suffix)}

    # -- writing -----------------------------------------------------------------------------------
    def write_unit(self, result: UnitResult) -> Path:
        """Commit a :class:`~benchmark.schema.UnitResult`: gallery, statistics, curves and perturbed scores
        first, then the part (whose metadata says how many curve rows the unit has)."""
        if result.gallery is not None:
            buf = io.BytesIO()
            arrays: dict[str, Any] = dict(result.gallery)
            np.savez_compressed(buf, **arrays)
            atomic_write_bytes(self.gallery_path(result.key), buf.getvalue())
        stats = getattr(result, "stats", None)
        if stats is not None and len(stats):
            write_parquet(self.stats_path(result.key), stats)
        else:
            self.stats_path(result.key).unlink(missing_ok=True)  # a rerun of a unit that had some
        perturbed = getattr(result, "perturbed", None)
        if perturbed is not None:
            self.perturbed.mkdir(parents=True, exist_ok=True)
            write_parquet(self.perturbed_path(result.key), perturbed)
        elif self.perturbed.is_dir():
            self.perturbed_path(result.key).unlink(missing_ok=True)
        curves = result.curves
        if curves is not None and len(curves):
            self.curves.mkdir(parents=True, exist_ok=True)
            write_parquet(self.curves_path(result.key), curves[CURVE_COLUMNS], schema=CURVE_SCHEMA)
        elif self.curves.is_dir():
            self.curves_path(result.key).unlink(missing_ok=True)  # a rerun of a unit that had some
        meta = {
            "suite_hash": self.hash,
            "unit": result.key,
            "curve_rows": 0 if curves is None else len(curves),
            "timings": result.timings.to_dict(orient="list"),
            "info": result.info,
        }
        path = self.part_path(result.key)
        write_parquet(path, result.scores, meta)
        return path

    # -- reading -----------------------------------------------------------------------------------
    def _key(self, path: Path) -> str:
        stem = path.name.rsplit(".", 1)[0]
        return stem[: -len(_SEP + self.hash)] if stem.endswith(_SEP + self.hash) else stem

    def _selected(self, paths: Iterable[Path]) -> list[Path]:
        return sorted(p for p in paths if self.units is None or self._key(p) in self.units)

    def _parts(self) -> list[Path]:
        return self._selected(self.parts.glob(f"*{_SEP}{self.hash}.parquet"))

    def unreported(self) -> list[str]:
        """Finished units on disk that the tables leave out (kept, not read): keys of this hash outside
        :attr:`units` (a larger ``--limit``), then ``key__hash`` of parts of other settings (``n``, seed...)."""
        if not self.parts.is_dir():
            return []
        same = sorted(k for k in self.done() if self.units is not None and k not in self.units)
        other = sorted(
            f.name[: -len(".parquet")]
            for f in self.parts.glob("*.parquet")
            if self._hash_of(f) not in (None, self.hash)
        )
        return same + other

    def load_scores(self) -> pd.DataFrame:
        """All score rows of this hash, in a canonical order (independent of execution order)."""
        frames = [pq.read_table(p).to_pandas() for p in self._parts()]
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype="float64" if c == "value" else "object") for c in SCORE_COLUMNS})
        df = pd.concat(frames, ignore_index=True)
        return sort_scores(df)

    def load_stats(self) -> pd.DataFrame:
        """The per-image statistics of dataset-level metrics of the finished units (canonical order).

        Only units whose part exists count (a statistics file without its part is an unfinished unit)."""
        done = self.done()
        found = sorted(self.stats.glob(f"*{_SEP}{self.hash}.parquet")) if self.stats.is_dir() else []
        files = self._selected(p for p in found if p.name.rsplit(_SEP, 1)[0] in done)
        frames = [pq.read_table(p).to_pandas() for p in files]
        if not frames:
            return pd.DataFrame({c: pd.Series(dtype="bool" if c == "degenerate" else "object") for c in STATS_COLUMNS})
        return sort_scores(pd.concat(frames, ignore_index=True))

    def load_perturbed(self) -> pd.DataFrame:
        """The meta-evaluation's scores under perturbed models of the finished units (canonical order;
        empty when no unit ran it). Only units whose part exists count, as for :meth:`load_stats`."""

        done = self.done()
        found = sorted(self.perturbed.glob(f"*{_SEP}{self.hash}.parquet")) if self.perturbed.is_dir() else []
        files = self._selected(p for p in found if p.name.rsplit(_SEP, 1)[0] in done)
        frames = [pq.read_table(p).to_pandas() for p in files]
        if not frames:
            return pd.DataFrame(columns=PERTURBED_COLUMNS)
        df = pd.concat(frames, ignore_index=True)
        return df.sort_values(
            ["model", "dataset", "method", "metric", "perturbation", "k", "image_id"], kind="mergesort"
        ).reset_index(drop=True)

    def load_meta(self) -> list[dict]:
        return [read_meta(p) for p in self._parts()]

    def _unit_curves(self, part: Path) -> pd.DataFrame:
        """The mean curves of the unit of ``part``: its curves file, or the JSON in the metadata of a part
        written before curves had their own file (``curves`` key, ``DataFrame.to_dict(orient="list")``)."""
        meta = read_meta(part)
        if "curves" in meta:  # the earlier layout
            return pd.DataFrame(meta["curves"])
        path = self.curves_path(self._key(part))
        if path.is_file():
            return pq.read_table(path).to_pandas()
        if meta.get("curve_rows", 0):
            raise CambenchError(
                f"The part {part} says its unit has {meta['curve_rows']} curve rows but {path} is missing; "
                f"expected both files of a finished unit. Delete the part to rerun that unit, or rerun with --fresh."
            )
        return pd.DataFrame(columns=CURVE_COLUMNS)

    def load_curves(self) -> pd.DataFrame:
        """Mean curves over all images (units combined, weighted by their image counts)."""
        frames = [self._unit_curves(p) for p in self._parts()]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame(columns=CURVE_COLUMNS)
        df = pd.concat(frames, ignore_index=True)
        df["wv"] = df["value"] * df["n"]
        keys = ["model", "dataset", "method", "metric", "step"]
        out = df.groupby(keys, as_index=False).agg(x=("x", "first"), wv=("wv", "sum"), n=("n", "sum"))
        out["value"] = out["wv"] / out["n"].clip(lower=1)
        return out[["model", "dataset", "method", "metric", "step", "x", "value", "n"]]

    def load_timings(self) -> pd.DataFrame:
        frames = [pd.DataFrame(m.get("timings", {})) for m in self.load_meta()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TIMING_COLUMNS)

    def load_gallery(self) -> list[dict[str, np.ndarray]]:
        """The gallery samples (one dict of arrays per unit that kept images), in key order."""
        out = []
        for p in self._selected(self.gallery.glob(f"*{_SEP}{self.hash}.npz")):
            with np.load(p, allow_pickle=False) as z:
                out.append({k: z[k] for k in z.files})
        return out


def sort_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical row order of a score table (so that equal runs give byte-identical files)."""
    return df.sort_values(["model", "dataset", "method", "metric", "image_id"], kind="mergesort").reset_index(drop=True)
