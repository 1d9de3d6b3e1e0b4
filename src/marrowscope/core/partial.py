"""Long runs keep their finished work: each result is appended to ``OUT.partial`` as it is made, and a
run started again with ``--resume`` reads it back and does only the rest.

The file is JSON lines. The first line says what made it (the model folder's identity and the
predictor's settings): a partial file of another model or other settings is refused, since mixing its
results with new ones would give a CSV no single run could give. Every other line is one whole result
(:func:`record` / :func:`result_of`), with the probabilities at full precision, so that a resumed run
writes what an uninterrupted one writes. Lines are flushed at once and fsynced at least every
``SYNC_S`` seconds, so a SIGKILL loses at most the last few seconds of work; a line it tore is dropped
and its file done again. On success the caller writes its outputs atomically and removes the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from marrowscope.core.artifacts import HOME, MODEL_FILES
from marrowscope.core.errors import MarrowscopeError, Unreadable
from marrowscope.core.predict import Prediction, Predictor, Result
from marrowscope.core.scale import Scale

SYNC_S = 2.0


def partial_path(out: str | Path) -> Path:
    return Path(str(out) + ".partial")


def identity(predictor: Predictor, command: str) -> dict:
    """What decides a run's results: the command, the model folder's files (hashed) and the settings."""
    digest = hashlib.sha256()
    for name in [*MODEL_FILES, *(f"{HOME}/{n}" for n in MODEL_FILES)]:  # an adapted folder's home decides too
        path = predictor.model_dir / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    settings = {k: v for k, v in predictor.settings.items() if k != "threads"}  # threads change no result
    return {"marrowscope_partial": 1, "command": command, "model": str(predictor.model_dir),
            "model_sha256": digest.hexdigest(), "settings": settings}


def record(result: Result) -> dict:
    """One result as a JSON-ready dict, nothing rounded."""
    if isinstance(result, Unreadable):
        return {"file": result.source, "reason": result.reason}
    r = result
    return {"file": r.source, "probs": [float(p) for p in r.probs], "dtype": str(r.probs.dtype), "call": r.call,
            "probability": r.probability, "decision": r.decision, "set": None if r.set is None else list(r.set),
            "unusual": r.unusual, "domain_score": r.domain_score, "blur_px": r.blur_px,
            "scale": None if r.scale is None else [r.scale.pixel_size_um, r.scale.source], "network": r.network}


def result_of(rec: dict) -> Result:
    """The result :func:`record` wrote."""
    if "reason" in rec:
        return Unreadable(rec["file"], rec["reason"])
    return Prediction(rec["file"], np.array(rec["probs"], dtype=rec["dtype"]), rec["call"], rec["probability"],
                      rec["decision"], None if rec["set"] is None else tuple(rec["set"]), rec["unusual"],
                      rec["domain_score"], None if rec["scale"] is None else Scale(*rec["scale"]), rec["blur_px"],
                      rec.get("network", ""))


class PartialFile:
    """``OUT.partial`` of one run; :meth:`for_rank` gives a DDP rank's own, ``OUT.partial.rankK``."""

    def __init__(self, out: str | Path, ident: dict, resume: bool):
        self.base = self.path = partial_path(out)
        self.ident, self.done, self.kept = ident, {}, 0
        if resume:
            for path in self.siblings():
                self.done.update(read(path, ident))
        elif self.siblings():
            raise MarrowscopeError(f"'{self.siblings()[0]}' holds the finished part of an interrupted run: run the "
                                   "same command with --resume to finish it, or remove it to start again.")
        self._fh, self._synced = None, time.monotonic()

    def for_rank(self, rank: int) -> "PartialFile":
        """The partial file DDP rank ``rank`` writes its own results to (what was read back stays here)."""
        other = object.__new__(PartialFile)
        other.base, other.path = self.base, self.base.with_name(f"{self.base.name}.rank{rank}")
        other.ident, other.done, other.kept, other._fh, other._synced = self.ident, {}, 0, None, time.monotonic()
        return other

    def siblings(self) -> list[Path]:
        """This run's partial files: its own and those of DDP ranks."""
        return sorted(p for p in self.base.parent.glob(self.base.name + "*") if p.is_file())

    def add(self, result: Result) -> None:
        if self._fh is None:
            fresh = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
            if fresh:
                self._fh.write(json.dumps(self.ident) + "\n")
        self._fh.write(json.dumps(record(result)) + "\n")
        self._fh.flush()
        self.kept += 1
        if time.monotonic() - self._synced >= SYNC_S:
            self.sync()

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._synced = time.monotonic()

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        """The run finished and its outputs are written: its partial files go."""
        self.close()
        for path in self.siblings():
            path.unlink(missing_ok=True)

    def held(self) -> int:
        """Results kept so far: read back and added."""
        return len(self.done) + self.kept


def read(path: Path, ident: dict) -> dict[str, Result]:
    """The results a partial file holds, by file; refuses one written by another model or settings. A line
    a kill tore (no newline, or not JSON) is dropped: its file is done again."""
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    try:
        head = json.loads(lines[0])
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or head.get("marrowscope_partial") != 1:
        raise MarrowscopeError(f"'{path}' is not a partial file of marrowscope; remove it or choose another --out.")
    if head != ident:
        what = [k for k in ("command", "model_sha256", "settings") if head.get(k) != ident.get(k)]
        raise MarrowscopeError(f"'{path}' was written by another run ({', '.join(what)} differ: model "
                               f"'{head.get('model')}'); it cannot be resumed with this one. Remove it, or resume "
                               "with the same command.")
    done = {}
    for line in lines[1:-1]:  # the last piece follows the last newline: empty, or a torn line
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[rec["file"]] = result_of(rec)
    return done
