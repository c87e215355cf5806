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

A unit may have several parts (incremental runs, docs/architecture.md): the first one computed is
``<unit_key>__<hash>``; when methods are added to a suite or edited (their plugin source or parameters), the
next run computes only those methods on the unit and writes them as an extra part
``<unit_key>~m<tag>__<hash>`` (``tag``: a digest of the method names it holds), with its own companions.
Each part records the methods it holds with their fingerprints (``methods``: plugin source and
parameters, :func:`benchmark.runner.fingerprint.method_fingerprints`) and the time it was written. A reader
merges a unit's parts (:meth:`Store.verify`): every planned method's rows (scores, statistics, perturbed
scores, curves, explain timings, gallery maps) come from the newest verified part that holds it with the
current fingerprint; rows of methods no longer planned, or stale, are left out; the rows of no method (the
images the loader could not read) come from the newest contributing part; the other timings (load, metrics,
meta-evaluation, total) of every contributing part are kept (what computing the reported rows cost);
warnings are joined, map differences kept for pairs computed together. Writing a part of all the unit's
methods removes its extra parts; writing an extra part removes the extra parts whose methods it all holds.

Every Parquet file carries, in its metadata, the unit key, the suite hash, cambench's version and the
SHA-256 of its content (:func:`content_digest`); the part also lists the digest of each companion file of
its unit. A reader verifies all of them (:meth:`Store.verify`): a file that fails (truncated, flipped,
foreign, stale) is named in one line and moved to ``OUT/quarantine/`` with the rest of its part, whose
methods count as not finished and are recomputed by the next run.

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``
(atomic on POSIX and Windows; never through a symbolic link), the companions before the part: a part on
disk means its unit is finished (a companion without its part is an unfinished unit, not read; its rerun
replaces it). Parts written by earlier versions, which kept the curves as JSON in the part's
metadata (key ``curves``), are still read: such a directory resumes and reports; a part without a
``methods`` record (written before incremental runs) holds every method of its rows. A rerun skips the
(unit, method) pairs whose rows carry the current suite hash and fingerprints. Parts with another hash
(another suite, version or setting such as ``n``) and parts of this hash outside the units asked for (a
larger ``--limit``) are kept on disk but not read (:meth:`Store.unreported`); ``fresh=True`` starts over.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


#: Between a unit key and the tag of an extra part of that unit (``<key>~m<tag>``).
_EXTRA = "~m"
#: A method name of the score rows that is no method: rows of the unit itself (unreadable images).
_UNIT_ROW = "("


def part_name(key: str, methods: Iterable[str] | None = None) -> str:
    """The name of a part of unit ``key``: ``key`` (the unit's first part, all its methods) or, for an extra
    part holding ``methods`` only, ``key~m<8 hex digits of their sorted names>``."""
    if methods is None:
        return key
    tag = hashlib.sha256("\n".join(sorted(methods)).encode()).hexdigest()[:8]
    return f"{key}{_EXTRA}{tag}"


def unit_of(part: str) -> str:
    """The unit key of a part name (:func:`part_name`)."""
    return part.split(_EXTRA, 1)[0]


def method_change(method: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    """Why method ``method``'s stored rows are stale, in a few words (``old``: the fingerprint its rows were
    computed with, ``None``: never computed here)."""
    if old is None:
        return f"method {method} is new"
    why = []
    if old.get("code") != new.get("code"):
        files = sorted(set(old.get("code") or {}) | set(new.get("code") or {}))
        why.append(f"plugin source {', '.join(files)}" if files else "plugin source")
    if old.get("params") != new.get("params"):
        why.append("params")
    return f"method {method} changed ({'; '.join(why) or 'fingerprint'})"


@dataclass
class Todo:
    """What a run must compute on one unit (:meth:`Store.todo`): ``methods`` (in the planned order);
    ``new``: nothing of the unit is stored; ``unit_reasons``: why every method is recomputed (its base
    fingerprint changed, :func:`fingerprint_changes`); ``method_reasons``: ``{method: why}`` otherwise
    (:func:`method_change`)."""

    methods: tuple[str, ...]
    new: bool = False
    unit_reasons: list[str] = field(default_factory=list)
    method_reasons: dict[str, str] = field(default_factory=dict)


class Store:
    """The parts of one run in ``out_dir`` for suite hash ``suite_hash``.

    ``units``: the unit keys of the run that was asked for (``run.json``'s ``units``); reading then sees
    only their parts, so that a run with a smaller ``--limit`` or ``n`` into a directory that holds a larger
    one reports what it was asked for. The other parts of the same hash stay on disk
    (:meth:`unreported`) and are reported again by a run that asks for them. ``None``: every part.
    ``fingerprints``: ``{unit key: resume fingerprint}`` (:mod:`benchmark.runner.fingerprint`) recorded in
    each part written; a part whose recorded fingerprint differs is not finished (:meth:`todo` says why).
    ``methods``: ``{unit key: {method: fingerprint}}``, the planned methods of each unit in order with their
    fingerprints (:func:`benchmark.runner.fingerprint.unit_method_fingerprints`): reading takes each one's rows
    from the newest part holding it with that fingerprint and leaves every other method's rows out; ``None``
    (a reader without a plan): every method of the unit's parts, each from the newest part holding it.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        suite_hash: str,
        log: Callable[[str], None] | None = None,
        units: Iterable[str] | None = None,
        fingerprints: Mapping[str, dict] | None = None,
        methods: Mapping[str, Mapping[str, Any]] | None = None,
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
        self.methods: dict[str, dict[str, Any]] | None = (
            None if methods is None else {k: dict(v) for k, v in methods.items()}
        )
        self._verified: dict[str, dict[str, Any]] | None = None  # part -> {table name: frame/arrays, "meta": ...}
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
        """Names (:func:`part_name`) of this hash's part files on disk (not yet verified)."""
        if not self.parts.is_dir():
            return set()
        suffix = f"{_SEP}{self.hash}.parquet"
        return {f.name[: -len(suffix)] for f in self.parts.iterdir() if f.name.endswith(suffix)}

    def _base_current(self, key: str, meta: Mapping[str, Any]) -> bool:
        """Whether a part of unit ``key`` was written with the unit's current base fingerprint."""
        want = self.fingerprints.get(key)
        have = meta.get("fingerprint")
        legacy = have is None and "sha256" not in meta  # written before parts had fingerprints
        return want is None or have == want or legacy

    def todo(self) -> dict[str, Todo]:
        """``{unit key: what to compute}`` for the units asked for (:attr:`units`, else those on disk) whose
        planned methods (:attr:`methods`) lack current rows: a unit without a verified part (``new``), a
        unit whose parts all have another base fingerprint (``unit_reasons``: every method), or the methods
        that are new or changed (``method_reasons``). Logs nothing (the driver says it once)."""
        self.verify()
        parts = self._unit_parts()
        keys = sorted(self.units) if self.units is not None else sorted(parts)
        out: dict[str, Todo] = {}
        for key in keys:
            planned = list((self.methods or {}).get(key, {}))
            recs = parts.get(key, [])
            if not recs:
                out[key] = Todo(tuple(planned), new=True)
                continue
            current = [(n, r) for n, r in recs if self._base_current(key, r["meta"])]
            if not current:
                have = recs[0][1]["meta"].get("fingerprint") or {}
                out[key] = Todo(tuple(planned), unit_reasons=fingerprint_changes(have, self.fingerprints[key]))
                continue
            if self.methods is None:
                continue
            chosen = self._choose(key, current)
            why = {}
            for m in planned:
                if m in chosen:
                    continue
                old = next((_held(r["meta"], r)[m] for _, r in current if m in _held(r["meta"], r)), None)
                why[m] = method_change(m, old, self.methods[key][m])
            if why:
                out[key] = Todo(tuple(m for m in planned if m in why), method_reasons=why)
        return out

    def done(self) -> set[str]:
        """Keys of the units finished for this suite hash: verified parts (:meth:`verify`) with the current
        fingerprint hold every planned method's rows (a changed base fingerprint is named once, in one line;
        the driver, :meth:`todo`, also names changed methods)."""
        self.verify()
        parts = self._unit_parts()
        todo = self.todo()
        why: dict[str, list[str]] = {}
        for key, t in todo.items():
            for reason in t.unit_reasons:
                why.setdefault(reason, []).append(key)
        for reason, keys in why.items():
            self.log(f"cambench: {len(keys)} finished unit(s) recomputed: {reason}.")
        return {k for k in parts if k not in todo and (self.units is None or k in self.units)}

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

    def write_unit(self, result: UnitResult, methods: Sequence[str] | None = None) -> Path:
        """Commit a :class:`~benchmark.schema.UnitResult`: each companion table (:data:`COMPANIONS`) that
        has rows, then the part, whose metadata lists the companions' digests (and the unit's info,
        fingerprint and methods). Raise :class:`StoreError` (one line) when a file cannot be written.

        ``methods``: the methods the result computed (``None``: every planned method of the unit). All of
        them: the unit's first part (its extra parts are removed); fewer: an extra part
        (:func:`part_name`) beside the others."""
        unit = result.key
        planned = (self.methods or {}).get(unit)
        subset = None if methods is None or planned is None or set(methods) >= set(planned) else list(methods)
        key = part_name(unit, subset)
        digests: dict[str, str] = {}
        for t in COMPANIONS:
            data = getattr(result, t.field, None)
            path = self.path(t, key)
            if data is None or len(data) == 0:
                if self._real_folder(self.folder(t)):
                    path.unlink(missing_ok=True)  # a rerun of a unit that had some
                continue
            self.folder(t).mkdir(parents=True, exist_ok=True)
            raw, digest = self._encode(t, unit, data)
            self._write_file(path, raw)
            digests[t.name] = digest
        extra: dict[str, Any] = {
            "tables": digests,
            "curve_rows": 0 if result.curves is None else len(result.curves),
            "info": result.info,
            "written": time.time_ns(),
        }
        if key != unit:
            extra["part"] = key
        if unit in self.fingerprints:
            extra["fingerprint"] = self.fingerprints[unit]
        if planned is not None:
            names = planned if methods is None else [m for m in methods if m in planned]
            extra["methods"] = {m: planned[m] for m in names}
        raw, _ = self._encode(PARTS, unit, result.scores, extra)
        path = self.part_path(key)
        self._write_file(path, raw)
        if self._verified is not None:
            self._verified.pop(key, None)
        for name in [n for n in self._on_disk() if n != key and unit_of(n) == unit and n != unit]:
            if subset is None or self._superseded(name, set(subset)):  # every method it holds is newer here
                for t in TABLES:
                    self.path(t, name).unlink(missing_ok=True)
                if self._verified is not None:
                    self._verified.pop(name, None)
        return path

    def _superseded(self, name: str, methods: set[str]) -> bool:
        """Whether extra part ``name`` holds only methods among ``methods`` (an unreadable one: no)."""
        try:
            held = read_meta(self.part_path(name)).get("methods")
        except Exception:  # left for verification to name and quarantine
            return False
        return isinstance(held, Mapping) and set(held) <= methods

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

    def _read_unit(self, name: str) -> dict[str, Any]:
        """The verified files of part ``name`` (:func:`part_name`); raise :class:`Corrupt`."""
        key = unit_of(name)
        part = self.part_path(name)
        scores, meta = self._read_parquet(part, key)
        if meta.get("part", name) != name:
            raise Corrupt(f"{part} is part {meta.get('part')!r} of unit {key!r} (a foreign file under this name)")
        if "sha256" in meta:
            missing = set(SCORE_COLUMNS) - set(scores.columns)
            if missing:
                raise Corrupt(f"{part} lacks the score column(s) {sorted(missing)}")
        rec: dict[str, Any] = {"meta": meta, PARTS.name: scores}
        listed = meta.get("tables")
        for t in COMPANIONS:
            path = self.path(t, name)
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
                f"The part {part} says its unit has {meta['curve_rows']} curve rows but {self.curves_path(name)} is "
                f"missing; expected both files of a finished unit. Delete the part to rerun that unit, or rerun "
                f"with --fresh."
            )
        return rec

    def quarantine(self, key: str, reason: str) -> None:
        """Move every file of part ``key`` (a unit key, or an extra part's :func:`part_name`) to
        ``OUT/quarantine/`` and say so in one line."""
        dest = self.out / QUARANTINE
        dest.mkdir(exist_ok=True)
        for t in TABLES:
            path = self.path(t, key)
            if path.is_file() or path.is_symlink():
                os.replace(path, dest / path.name)
        self.quarantined.append(key)
        what = f"unit {key}" if unit_of(key) == key else f"part {key} of unit {unit_of(key)}"
        self.log(f"cambench: {reason}: moved {what} to {dest}; the next run recomputes it.")

    def _verify_parts(self) -> dict[str, dict[str, Any]]:
        """``{part name: its verified tables}`` of the selected units' parts (each read once per store);
        every part with a file that fails is quarantined (:meth:`quarantine`) and left out."""
        if self._verified is None:
            self._verified = {}
        on_disk = self._on_disk()
        for name in [k for k in self._verified if k not in on_disk]:
            del self._verified[name]
        for name in sorted(on_disk - set(self._verified)):
            if self.units is not None and unit_of(name) not in self.units:
                continue
            try:
                self._verified[name] = self._read_unit(name)
            except Corrupt as exc:
                self.quarantine(name, str(exc))
        return {k: v for k, v in self._verified.items() if self.units is None or unit_of(k) in self.units}

    def _unit_parts(self) -> dict[str, list[tuple[str, dict[str, Any]]]]:
        """``{unit key: [(part name, verified tables)]}``, newest part first (:meth:`_verify_parts`)."""
        out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        for name, rec in self._verify_parts().items():
            out.setdefault(unit_of(name), []).append((name, rec))
        for recs in out.values():
            recs.sort(key=lambda nr: (-int(nr[1]["meta"].get("written", 0) or 0), nr[0] != unit_of(nr[0]), nr[0]))
        return out

    def _choose(self, key: str, recs: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
        """``{method: part name}``: each of unit ``key``'s methods taken from the newest part (``recs``, newest
        first) that holds it, with its planned fingerprint when :attr:`methods` is set (planned methods
        only, in the planned order)."""
        planned = None if self.methods is None else self.methods.get(key, {})
        chosen: dict[str, str] = {}
        for name, rec in recs:
            held = _held(rec["meta"], rec)
            for m, fp in held.items():
                if m in chosen:
                    continue
                if planned is None or (m in planned and (fp is None or fp == planned[m])):
                    chosen[m] = name
        if planned is not None:
            chosen = {m: chosen[m] for m in planned if m in chosen}
        return chosen

    def verify(self) -> dict[str, dict[str, Any]]:
        """``{unit key: its verified tables}`` of the selected finished units (read once per store), each
        unit's parts merged (:meth:`_merge`: every method's rows from the newest part holding it); every part
        with a file that fails is quarantined (:meth:`quarantine`) and left out."""
        out = {}
        for key, recs in sorted(self._unit_parts().items()):
            current = [(n, r) for n, r in recs if self._base_current(key, r["meta"])] or recs
            out[key] = self._merge(key, current)
        return out

    def _merge(self, key: str, recs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """One unit's tables from its parts (``recs``, newest first): see the module docstring."""
        chosen = self._choose(key, recs)
        by_part: dict[str, set[str]] = {}
        for m, name in chosen.items():
            by_part.setdefault(name, set()).add(m)
        used = [(n, r) for n, r in recs if n in by_part] or recs[:1]
        if len(used) == 1:
            name, rec = used[0]
            if by_part.get(name, set()) == set(_held(rec["meta"], rec)):
                return rec  # one part, every method of it: as written
        primary = used[0][0]
        merged: dict[str, Any] = {}
        for t in (PARTS, STATS, PERTURBED, CURVES, TIMINGS):
            frames = []
            for name, rec in used:
                frame = _table_of(rec, t)
                if frame is None or not len(frame):
                    continue
                keep = by_part.get(name, set())
                if t is TIMINGS:
                    mask = (frame["stage"] != "explain") | frame["name"].isin(list(keep))
                else:
                    mask = frame["method"].isin(list(keep))
                    if name == primary:
                        mask |= frame["method"].astype(str).str.startswith(_UNIT_ROW)
                frames.append(frame[mask.to_numpy()])
            if frames:
                merged[t.name] = pd.concat(frames, ignore_index=True)
        gallery = _merge_gallery([(r.get(GALLERY.name), by_part.get(n, set())) for n, r in used], list(chosen))
        if gallery is not None:
            merged[GALLERY.name] = gallery
        merged["meta"] = _merge_meta(key, [(n, r["meta"], by_part.get(n, set())) for n, r in used], chosen)
        return merged

    def missing(self) -> list[str]:
        """The units asked for (:attr:`units`) without a verified part, or (with :attr:`methods`) without the
        current rows of every planned method."""
        have = self.verify()
        parts = self._unit_parts()
        out = []
        for k in self.units or ():
            if k not in have:
                out.append(k)
            elif self.methods is not None and k in self.methods:
                current = [(n, r) for n, r in parts[k] if self._base_current(k, r["meta"])]
                if set(self._choose(k, current)) != set(self.methods[k]):
                    out.append(k)
        return sorted(out)

    # -- reading -----------------------------------------------------------------------------------
    def _key(self, path: Path) -> str:
        stem = path.name.rsplit(".", 1)[0]
        return stem[: -len(_SEP + self.hash)] if stem.endswith(_SEP + self.hash) else stem

    def _selected(self, paths: Iterable[Path]) -> list[Path]:
        return sorted(p for p in paths if self.units is None or self._key(p) in self.units)

    def _parts(self) -> list[Path]:
        return [self.part_path(k) for k in sorted(self._verify_parts())]

    def unreported(self) -> list[str]:
        """Finished units on disk that the tables leave out (kept, not read): keys of this hash outside
        :attr:`units` (a larger ``--limit``), then ``key__hash`` of parts of other settings (``n``, seed...)."""
        if not self.parts.is_dir():
            return []
        on_disk = {unit_of(k) for k in self._on_disk()}
        same = sorted(k for k in on_disk if self.units is not None and k not in self.units)
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


def _held(meta: Mapping[str, Any], rec: Mapping[str, Any]) -> dict[str, Any]:
    """``{method: fingerprint}`` a part holds: its ``methods`` record, or (a part written before incremental
    runs) every method of its score rows, fingerprint ``None`` (taken as current)."""
    if isinstance(meta.get("methods"), Mapping):
        return dict(meta["methods"])
    scores = rec.get(PARTS.name)
    names = [] if scores is None or not len(scores) else pd.unique(scores["method"].astype(str))
    return {str(m): None for m in names if not str(m).startswith(_UNIT_ROW)}


def _table_of(rec: Mapping[str, Any], t: Table) -> pd.DataFrame | None:
    """Table ``t`` of a verified part (the earliest layouts kept curves and timings in the metadata)."""
    if t.name in rec:
        return rec[t.name]
    if t in (CURVES, TIMINGS) and t.name in rec["meta"] and isinstance(rec["meta"][t.name], list):
        return pd.DataFrame(rec["meta"][t.name])
    return None


def _merge_gallery(
    galleries: Sequence[tuple[Mapping[str, np.ndarray] | None, set[str]]], order: Sequence[str]
) -> dict[str, np.ndarray] | None:
    """One gallery from parts' galleries (``(arrays, methods taken from it)``): the images, targets and
    ground truth of the first, the maps of each method from its part, in ``order``."""
    present = [(g, keep) for g, keep in galleries if g is not None and "maps" in g]
    if not present:
        return None
    base = present[0][0]
    n = len(base["ids"])
    maps, names = [], []
    for m in order:
        for g, keep in present:
            if m not in keep:
                continue
            listed = [str(x) for x in g["methods"]]
            if m in listed and len(g["ids"]) == n and np.array_equal(g["ids"], base["ids"]):
                maps.append(g["maps"][:, listed.index(m)])
                names.append(m)
            break
    out = {k: v for k, v in base.items() if k not in ("methods", "maps")}
    out["methods"] = np.asarray(names, dtype=str)
    shape = base["maps"].shape
    out["maps"] = np.stack(maps, axis=1) if maps else np.zeros((shape[0], 0, *shape[2:]), dtype=base["maps"].dtype)
    return out


def _merge_meta(key: str, metas: Sequence[tuple[str, Mapping[str, Any], set[str]]], chosen: Mapping[str, str]) -> dict:
    """One unit record from its parts' (name, metadata, methods taken from it), newest first: the first's
    record, with warnings joined, map differences of pairs computed in one part (both taken from it),
    capture facts folded (min of ``activation_min``, max of the others) and ``parts``: which part gave what."""
    out = dict(metas[0][1])
    info = dict(out.get("info") or {})
    warn: set[str] = set()
    diffs: dict[str, float] = {}
    facts: dict[str, float] = {}
    for _, meta, keep in metas:
        i = meta.get("info") or {}
        warn.update(str(w) for w in i.get("warnings", ()))
        for pair, d in (i.get("map_diffs") or {}).items():
            a, _, b = str(pair).partition("|")
            if a in keep and b in keep:
                diffs[pair] = d
        for k, v in (i.get("capture") or {}).items():
            facts[k] = v if k not in facts else (min if k == "activation_min" else max)(facts[k], v)
    info.update(warnings=sorted(warn), map_diffs=diffs, capture=facts)
    out.update(unit=key, info=info, parts={name: sorted(keep) for name, _, keep in metas})
    out["methods"] = {
        m: next((meta.get("methods") or {}).get(m) for n, meta, _ in metas if n == p) for m, p in chosen.items()
    }
    return out


def planned_methods(run: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """``{unit key: {method: fingerprint}}`` of a ``run.json`` record (each experiment's
    ``method_fingerprints``; a unit key starts with its experiment's index), what :class:`Store` reads the
    rows of a run by; ``None`` for a record written before incremental runs (every stored method read)."""
    exps = run.get("experiments") or []
    if not exps or any("method_fingerprints" not in e for e in exps):
        return None
    out = {}
    for key in run.get("units") or []:
        head = str(key).split("-", 1)[0]
        if head.isdigit() and int(head) < len(exps):
            out[str(key)] = dict(exps[int(head)]["method_fingerprints"])
    return out
