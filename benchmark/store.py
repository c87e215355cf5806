"""Atomic, resumable, verified result store.

Layout of an output directory ``OUT``: ``run.json`` (suite hash, suite TOML, versions, directions,
families, baselines, reducers, skipped) and one file per unit and per-unit table, each declared once in
:data:`TABLES` (a :class:`Table`: folder, columns, Parquet types, row order, the :class:`UnitResult`
field it stores)::

    OUT/parts/<unit_key>__<hash>.parquet      score rows (``SCORE_COLUMNS``): the unit's commit record
    OUT/curves/<unit_key>__<hash>.parquet     mean curves (``CURVE_COLUMNS``, typed ``CURVE_SCHEMA``)
    OUT/stats/<unit_key>__<hash>.parquet      per-image statistics of dataset-level metrics
    OUT/perturbed/<unit_key>__<hash>.parquet  scores under the meta-evaluation's perturbed models
    OUT/timings/<unit_key>__<hash>.parquet    the unit's timings (``TIMING_COLUMNS``)
    OUT/gallery/<unit_key>__<hash>.npz        images + every method's map for the first images

Every Parquet file carries, in its metadata, the unit key, the suite hash, cambench's version and the
SHA-256 of its content (:func:`content_digest`); the part also lists the digest of each companion file of
its unit. A reader verifies all of them (:meth:`Store.verify`): a file that fails (truncated, flipped,
foreign, stale) is named in one line and moved to ``OUT/quarantine/`` with the rest of its unit, which
counts as not finished and is recomputed by the next run.

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``
(atomic on POSIX and Windows; never through a symbolic link), the companions before the part: a part on
disk means its unit is finished (a companion without its part is an unfinished unit, not read; its rerun
replaces it). Parts written by earlier versions, which kept the curves as JSON in the part's
metadata (key ``curves``), are still read: such a directory resumes and reports. A rerun skips units
whose part carries the current suite hash. Parts with another hash (another suite, version or setting
such as ``n``) and parts of this hash outside the units asked for (a larger ``--limit``) are kept on
disk but not read (:meth:`Store.unreported`); ``fresh=True`` starts over.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
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


def content_digest(table: pa.Table) -> str:
    """SHA-256 of a table's content as read back (Arrow IPC of its columns, without schema metadata): the
    checksum a Parquet file of the store records for itself and a reader recomputes."""
    table = table.replace_schema_metadata(None).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def _parquet_bytes(table: pa.Table, meta: dict) -> bytes:
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


@dataclass(frozen=True)
class Table:
    """One per-unit table of the store, declared once: its folder (``name``), the :class:`UnitResult`
    field it stores (``field``), its columns, Parquet types (``None``: inferred), row order and format
    (``parquet`` or ``npz``, the gallery's arrays). :meth:`Store.write_unit` and :meth:`Store.load` read
    everything they do from here."""

    name: str
    field: str
    columns: tuple[str, ...] = ()
    schema: pa.Schema | None = None
    order: tuple[str, ...] = ()
    fmt: str = "parquet"

    @property
    def ext(self) -> str:
        return f".{self.fmt}"

    def empty(self) -> pd.DataFrame:
        kinds = {"value": "float64", "degenerate": "bool", "seconds": "float64"}
        return pd.DataFrame({c: pd.Series(dtype=kinds.get(c, "object")) for c in self.columns})


SCORE_ORDER = ("model", "dataset", "method", "metric", "image_id")
GALLERY = Table("gallery", "gallery", fmt="npz")
STATS = Table("stats", "stats", tuple(STATS_COLUMNS), order=SCORE_ORDER)
PERTURBED = Table(
    "perturbed",
    "perturbed",
    tuple(PERTURBED_COLUMNS),
    order=("model", "dataset", "method", "metric", "perturbation", "k", "image_id"),
)
CURVES = Table("curves", "curves", tuple(CURVE_COLUMNS), schema=CURVE_SCHEMA)
TIMINGS = Table("timings", "timings", tuple(TIMING_COLUMNS))
PARTS = Table("parts", "scores", tuple(SCORE_COLUMNS), order=SCORE_ORDER)
#: Every per-unit table, in write order: the part, the unit's commit record, last.
TABLES: tuple[Table, ...] = (GALLERY, STATS, PERTURBED, CURVES, TIMINGS, PARTS)
COMPANIONS = TABLES[:-1]
#: The folder a file that failed verification is moved to (with the rest of its unit).
QUARANTINE = "quarantine"


class StoreError(CambenchError):
    """The store cannot be written or a stored file cannot be trusted."""


class Corrupt(StoreError):
    """A stored file failed verification (its unit is quarantined and recomputed)."""


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EROFS:
        return "read-only filesystem"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "not writable (permission denied or immutable)"
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    return exc.strerror or str(exc)


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why a unit's resume fingerprint changed, one phrase per differing entry (``old`` -> ``new``)."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            names = sorted(n for n in set(a) | set(b) if a.get(n) != b.get(n))
            out.append(f"{k} changed ({', '.join(str(n) for n in names[:3])}{', ...' if len(names) > 3 else ''})")
        else:
            out.append(f"{k} changed ({a if a is not None else 'unrecorded'} -> {b})")
    return out or ["its fingerprint changed"]


class Store:
    """The parts of one run in ``out_dir`` for suite hash ``suite_hash``.

    ``units``: the unit keys of the run that was asked for (``run.json``'s ``units``); reading then sees
    only their parts, so that a run with a smaller ``--limit`` or ``n`` into a directory that holds a larger
    one reports what it was asked for. The other parts of the same hash stay on disk
    (:meth:`unreported`) and are reported again by a run that asks for them. ``None``: every part.
    ``fingerprints``: ``{unit key: resume fingerprint}`` (:mod:`benchmark.runner.fingerprint`) recorded in
    each part written; a part whose recorded fingerprint differs is not finished (:meth:`done` says why).
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        suite_hash: str,
        log: Callable[[str], None] | None = None,
        units: Iterable[str] | None = None,
        fingerprints: Mapping[str, dict] | None = None,
    ) -> None:
        self.out = Path(out_dir)
        self.hash = suite_hash
        self.parts = self.out / PARTS.name
        self.gallery = self.out / GALLERY.name
        self.stats = self.out / STATS.name
        self.curves = self.out / CURVES.name  # created by the first unit that has curves
        self.perturbed = self.out / PERTURBED.name  # created by the first unit that has such rows
        self.timings = self.out / TIMINGS.name
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.units: frozenset[str] | None = None if units is None else frozenset(units)
        self.fingerprints = dict(fingerprints or {})
        self._verified: dict[str, dict[str, Any]] | None = None  # key -> {table name: frame/arrays, "meta": ...}
        self.quarantined: list[str] = []

    def folder(self, table: Table) -> Path:
        return self.out / table.name

    def path(self, table: Table, key: str) -> Path:
        return self.folder(table) / f"{key}{_SEP}{self.hash}{table.ext}"

    # the paths of the earlier API
    def part_path(self, key: str) -> Path:
        return self.path(PARTS, key)

    def stats_path(self, key: str) -> Path:
        return self.path(STATS, key)

    def curves_path(self, key: str) -> Path:
        return self.path(CURVES, key)

    def perturbed_path(self, key: str) -> Path:
        return self.path(PERTURBED, key)

    def gallery_path(self, key: str) -> Path:
        return self.path(GALLERY, key)

    # -- lifecycle ---------------------------------------------------------------------------------
    def _real_folder(self, folder: Path) -> bool:
        """Whether ``folder`` exists as a real directory; refuse a symbolic link or a file (one line)."""
        if folder.is_symlink():
            raise StoreError(
                f"{folder} is a symbolic link; cambench keeps its results in real folders inside {self.out} "
                f"and never follows links there: remove the link (rm {folder}) or pass --out a new directory."
            )
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder} is not a directory; cambench keeps its {folder.name} there: remove it.")
        return folder.is_dir()

    def _clear(self, folder: Path, pattern: str) -> None:
        """Delete the regular files cambench names in ``folder`` (``pattern``), never following a link."""
        if not self._real_folder(folder):
            return
        for f in folder.glob(pattern):
            if f.is_symlink() or f.is_file():
                f.unlink(missing_ok=True)
        try:
            folder.rmdir()  # when nothing else is left in it
        except OSError:
            pass

    def prepare(self, fresh: bool = False) -> None:
        """Create the folders (each checked writable); with ``fresh`` delete earlier results (only the
        files cambench writes); drop temp files of killed writers; count parts of other settings."""
        if self.out.is_symlink() is False and not self.out.is_dir():
            self.out.mkdir(parents=True, exist_ok=True)
        for t in (*TABLES, Table(QUARANTINE, "")):
            self._real_folder(self.folder(t))
        if fresh:
            for t in TABLES:
                self._clear(self.folder(t), f"*{_SEP}*{t.ext}")
            self._clear(self.out / "plots", "*.png")
        for t in (PARTS, GALLERY, STATS):
            self.folder(t).mkdir(parents=True, exist_ok=True)
        for t in TABLES:
            folder = self.folder(t)
            if not folder.is_dir():
                continue
            try:
                fd, probe = tempfile.mkstemp(prefix=".cambench-probe.", suffix=".tmp", dir=folder)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise StoreError(
                    f"cannot write into {folder}: {_os_reason(exc)}; make it writable (chmod u+w, chattr -i) "
                    f"or pass --out a directory on a writable disk."
                ) from None
        other = 0
        for t in TABLES:
            folder = self.folder(t)
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                if f.name.startswith(".") and f.name.endswith(".tmp"):
                    f.unlink(missing_ok=True)  # left by a killed writer
                elif t is PARTS and f.is_file() and self._hash_of(f) != self.hash:
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

    def _on_disk(self) -> set[str]:
        """Keys of this hash with a part file on disk (not yet verified)."""
        if not self.parts.is_dir():
            return set()
        suffix = f"{_SEP}{self.hash}.parquet"
        return {f.name[: -len(suffix)] for f in self.parts.iterdir() if f.name.endswith(suffix)}

    def done(self) -> set[str]:
        """Keys of the units finished for this suite hash: parts that pass verification (:meth:`verify`)
        and whose recorded fingerprint is the current one (a changed one is named once, in one line)."""
        good = self.verify()
        if not self.fingerprints:
            return set(good)
        out: set[str] = set()
        why: dict[str, list[str]] = {}
        for key, rec in good.items():
            want = self.fingerprints.get(key)
            have = rec["meta"].get("fingerprint")
            legacy = have is None and "sha256" not in rec["meta"]  # written before parts had fingerprints
            if want is None or have == want or legacy:
                out.add(key)
            else:
                for reason in fingerprint_changes(have or {}, want):
                    why.setdefault(reason, []).append(key)
        for reason, keys in why.items():
            self.log(f"cambench: {len(keys)} finished unit(s) recomputed: {reason}.")
        return out

    # -- writing -----------------------------------------------------------------------------------
    def _write_file(self, path: Path, data: bytes) -> None:
        try:
            atomic_write_bytes(path, data)
        except OSError as exc:
            raise StoreError(
                f"cannot write {path}: {_os_reason(exc)}; the units finished before are kept: fix that "
                f"(free space, permissions, a shorter label) and rerun the same command to resume."
            ) from None

    def _meta(self, key: str, table: pa.Table | None = None) -> dict:
        meta: dict[str, Any] = {"suite_hash": self.hash, "unit": key, "cambench": __version__}
        if table is not None:
            meta["sha256"] = content_digest(table)
        return meta

    def _encode(self, t: Table, key: str, data: Any, extra: dict | None = None) -> tuple[bytes, str]:
        """The bytes of table ``t``'s file for unit ``key`` and their content digest."""
        if t.fmt == "npz":
            buf = io.BytesIO()
            np.savez_compressed(buf, **dict(data))
            raw = buf.getvalue()
            return raw, hashlib.sha256(raw).hexdigest()
        frame = data[list(t.columns)] if t.schema is not None else data
        arrow = pa.Table.from_pandas(frame, schema=t.schema, preserve_index=False)
        first = _parquet_bytes(arrow, {})
        digest = content_digest(pq.read_table(io.BytesIO(first)))  # the content as a reader will see it
        meta = {**self._meta(key), "sha256": digest, **(extra or {})}
        return _parquet_bytes(arrow, meta), digest

    def write_unit(self, result: UnitResult) -> Path:
        """Commit a :class:`~benchmark.schema.UnitResult`: each companion table (:data:`COMPANIONS`) that
        has rows, then the part, whose metadata lists the companions' digests (and the unit's info and
        fingerprint). Raise :class:`StoreError` (one line) when a file cannot be written."""
        key = result.key
        digests: dict[str, str] = {}
        for t in COMPANIONS:
            data = getattr(result, t.field, None)
            path = self.path(t, key)
            if data is None or len(data) == 0:
                if self._real_folder(self.folder(t)):
                    path.unlink(missing_ok=True)  # a rerun of a unit that had some
                continue
            self.folder(t).mkdir(parents=True, exist_ok=True)
            raw, digest = self._encode(t, key, data)
            self._write_file(path, raw)
            digests[t.name] = digest
        extra = {
            "tables": digests,
            "curve_rows": 0 if result.curves is None else len(result.curves),
            "info": result.info,
        }
        if key in self.fingerprints:
            extra["fingerprint"] = self.fingerprints[key]
        raw, _ = self._encode(PARTS, key, result.scores, extra)
        path = self.part_path(key)
        self._write_file(path, raw)
        if self._verified is not None:
            self._verified.pop(key, None)
        return path

    # -- verifying ---------------------------------------------------------------------------------
    def _read_parquet(self, path: Path, key: str) -> tuple[pd.DataFrame, dict]:
        """A verified Parquet file of unit ``key``: (frame, metadata); raise :class:`Corrupt`."""
        try:
            table = pq.read_table(path)
            meta = json.loads((table.schema.metadata or {}).get(META_KEY, b"{}"))
        except Exception as exc:  # any reader failure means the file cannot be trusted
            raise Corrupt(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:80]})") from None
        if not isinstance(meta, dict):
            raise Corrupt(f"{path} has no cambench record")
        if meta.get("suite_hash", self.hash) != self.hash or meta.get("unit", key) != key:
            raise Corrupt(
                f"{path} belongs to unit {meta.get('unit')!r} of suite hash {meta.get('suite_hash')!r} "
                f"(a foreign file under this name)"
            )
        if "sha256" in meta and content_digest(table) != meta["sha256"]:
            raise Corrupt(f"{path} fails its checksum (its content changed after it was written)")
        # the checksummed columns alone make the frame (not the unverified pandas metadata of the footer)
        return table.replace_schema_metadata(None).to_pandas(), meta

    def _read_unit(self, key: str) -> dict[str, Any]:
        part = self.part_path(key)
        scores, meta = self._read_parquet(part, key)
        if "sha256" in meta:
            missing = set(SCORE_COLUMNS) - set(scores.columns)
            if missing:
                raise Corrupt(f"{part} lacks the score column(s) {sorted(missing)}")
        rec: dict[str, Any] = {"meta": meta, PARTS.name: scores}
        listed = meta.get("tables")
        for t in COMPANIONS:
            path = self.path(t, key)
            if listed is None:  # a part of an earlier version: companions not listed, read as they are
                if t.fmt == "parquet" and path.is_file():
                    rec[t.name] = self._read_parquet(path, key)[0]
                continue
            want = listed.get(t.name)
            if want is None:
                continue
            if not path.is_file():
                raise Corrupt(f"{path} is missing, but its part {part.name} lists it")
            if t.fmt == "npz":
                raw = path.read_bytes()
                if hashlib.sha256(raw).hexdigest() != want:
                    raise Corrupt(f"{path} fails its checksum")
                with np.load(io.BytesIO(raw), allow_pickle=False) as z:
                    rec[t.name] = {k: z[k] for k in z.files}
                continue
            frame, m = self._read_parquet(path, key)
            if m.get("sha256") != want:
                raise Corrupt(f"{path} is not the {t.name} file its part {part.name} was written with")
            rec[t.name] = frame
        if listed is None and "curves" not in rec and "curves" not in meta and meta.get("curve_rows", 0):
            raise CambenchError(
                f"The part {part} says its unit has {meta['curve_rows']} curve rows but {self.curves_path(key)} is "
                f"missing; expected both files of a finished unit. Delete the part to rerun that unit, or rerun "
                f"with --fresh."
            )
        return rec

    def quarantine(self, key: str, reason: str) -> None:
        """Move every file of unit ``key`` to ``OUT/quarantine/`` and say so in one line."""
        dest = self.out / QUARANTINE
        dest.mkdir(exist_ok=True)
        for t in TABLES:
            path = self.path(t, key)
            if path.is_file() or path.is_symlink():
                os.replace(path, dest / path.name)
        self.quarantined.append(key)
        self.log(f"cambench: {reason}: moved unit {key} to {dest}; the next run recomputes it.")

    def verify(self) -> dict[str, dict[str, Any]]:
        """``{unit key: its verified tables}`` of the selected finished units (read once per store);
        every unit with a file that fails is quarantined (:meth:`quarantine`) and left out."""
        if self._verified is None:
            self._verified = {}
        on_disk = self._on_disk()
        for key in [k for k in self._verified if k not in on_disk]:
            del self._verified[key]
        for key in sorted(on_disk - set(self._verified)):
            if self.units is not None and key not in self.units:
                continue
            try:
                self._verified[key] = self._read_unit(key)
            except Corrupt as exc:
                self.quarantine(key, str(exc))
        return {k: v for k, v in self._verified.items() if self.units is None or k in self.units}

    def missing(self) -> list[str]:
        """The units asked for (:attr:`units`) without a verified part."""
        have = self.verify()
        return sorted(k for k in (self.units or ()) if k not in have)

    # -- reading -----------------------------------------------------------------------------------
    def _key(self, path: Path) -> str:
        stem = path.name.rsplit(".", 1)[0]
        return stem[: -len(_SEP + self.hash)] if stem.endswith(_SEP + self.hash) else stem

    def _selected(self, paths: Iterable[Path]) -> list[Path]:
        return sorted(p for p in paths if self.units is None or self._key(p) in self.units)

    def _parts(self) -> list[Path]:
        return [self.part_path(k) for k in sorted(self.verify())]

    def unreported(self) -> list[str]:
        """Finished units on disk that the tables leave out (kept, not read): keys of this hash outside
        :attr:`units` (a larger ``--limit``), then ``key__hash`` of parts of other settings (``n``, seed...)."""
        if not self.parts.is_dir():
            return []
        same = sorted(k for k in self._on_disk() if self.units is not None and k not in self.units)
        other = sorted(
            f.name[: -len(".parquet")]
            for f in self.parts.glob("*.parquet")
            if self._hash_of(f) not in (None, self.hash)
        )
        return same + other

    def load(self, table: Table) -> pd.DataFrame:
        """Table ``table`` of every verified finished unit, in its canonical order."""
        frames = [rec[table.name] for _, rec in sorted(self.verify().items()) if table.name in rec]
        frames = [f for f in frames if len(f)]
        if not frames:
            return table.empty()
        df = pd.concat(frames, ignore_index=True)
        if table.order:
            df = df.sort_values(list(table.order), kind="mergesort").reset_index(drop=True)
        return df

    def load_scores(self) -> pd.DataFrame:
        """All score rows of this hash, in a canonical order (independent of execution order)."""
        return self.load(PARTS)

    def load_stats(self) -> pd.DataFrame:
        """The per-image statistics of dataset-level metrics of the finished units (canonical order)."""
        return self.load(STATS)

    def load_perturbed(self) -> pd.DataFrame:
        """The meta-evaluation's scores under perturbed models of the finished units (canonical order)."""
        return self.load(PERTURBED)

    def load_meta(self) -> list[dict]:
        return [rec["meta"] for _, rec in sorted(self.verify().items())]

    def load_curves(self) -> pd.DataFrame:
        """Mean curves over all images (units combined, weighted by their image counts)."""
        frames = []
        for _, rec in sorted(self.verify().items()):
            if "curves" in rec["meta"]:  # the earliest layout: the curves as JSON in the part's metadata
                frames.append(pd.DataFrame(rec["meta"]["curves"]))
            elif CURVES.name in rec:
                frames.append(rec[CURVES.name])
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
        """The timings of the finished units (their own table; parts of earlier versions kept them in
        their metadata)."""
        frames = []
        for _, rec in sorted(self.verify().items()):
            if TIMINGS.name in rec:
                frames.append(rec[TIMINGS.name])
            elif "timings" in rec["meta"]:
                frames.append(pd.DataFrame(rec["meta"]["timings"]))
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=TIMING_COLUMNS)

    def load_gallery(self) -> list[dict[str, np.ndarray]]:
        """The gallery samples (one dict of arrays per unit that kept images), in key order."""
        out = []
        for key, rec in sorted(self.verify().items()):
            if GALLERY.name in rec:
                out.append(rec[GALLERY.name])
            elif "tables" not in rec["meta"] and self.gallery_path(key).is_file():  # an earlier version's
                with np.load(self.gallery_path(key), allow_pickle=False) as z:
                    out.append({k: z[k] for k in z.files})
        return out


def sort_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Canonical row order of a score table (so that equal runs give byte-identical files)."""
    return df.sort_values(list(SCORE_ORDER), kind="mergesort").reset_index(drop=True)
