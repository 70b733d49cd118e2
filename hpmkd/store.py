"""Content-addressed artifact store shared by all runs (the seed of HPM-KD's shared memory).

An artifact is a directory named by the SHA-256 of the canonical JSON of what determines it
(for a trained model: architecture, its parameters, the data fingerprint, the recipe and the
seed). Artifacts appear atomically (written to a temporary directory, then renamed into place)
and a per-key file lock makes concurrent runs that need the same artifact build it only once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

SCHEMA_VERSION = 1
META_FILE = "meta.json"
MODEL_FILE = "model.pt"


def content_key(kind: str, spec: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``{"kind", "schema", **spec}`` as canonical JSON (sorted keys)."""
    payload = {"kind": kind, "schema": SCHEMA_VERSION, **spec}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Artifact:
    key: str
    path: Path
    meta: dict[str, Any]

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


class ArtifactStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def _dir(self, key: str) -> Path:
        return self.root / "objects" / key[:2] / key

    def get(self, key: str) -> Artifact | None:
        path = self._dir(key)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            return None
        return Artifact(key, path, json.loads(meta_file.read_text()))

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the per-key lock: the first holder builds the artifact, the others then reuse it."""
        lock_dir = self.root / "locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / f"{key}.lock")):
            yield

    def put_model(
        self, key: str, state_dict: Mapping[str, Any], meta: Mapping[str, Any]
    ) -> Artifact:
        """Store a model's weights and metadata under ``key`` (atomically; first writer wins)."""
        return self.put(key, lambda path: torch.save(dict(state_dict), path / MODEL_FILE), meta)

    def put(self, key: str, write: Callable[[Path], None], meta: Mapping[str, Any]) -> Artifact:
        """Store the files ``write(directory)`` creates, and metadata, under ``key`` (atomically;
        first writer wins)."""
        staging_root = self.root / "staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=staging_root))
        try:
            write(staging)
            full_meta = {"key": key, "created": time.time(), **meta}
            (staging / META_FILE).write_text(json.dumps(full_meta, indent=2, default=str))
            final = self._dir(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError:
                if self.get(key) is None:
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        artifact = self.get(key)
        assert artifact is not None
        return artifact

    def list(self) -> list[Artifact]:
        objects = self.root / "objects"
        if not objects.is_dir():
            return []
        found = (self.get(p.name) for p in sorted(objects.glob("*/*")))
        return sorted((a for a in found if a is not None), key=lambda a: a.meta.get("created", 0))

    def remove(self, key: str) -> None:
        """Take an artifact out atomically (renamed away first, so no reader sees half of it)."""
        with self.lock(key):
            path = self._dir(key)
            if not path.is_dir():
                return
            trash = self.root / "staging" / f"removed-{key}-{os.getpid()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def gc(
        self,
        *,
        older_than_days: float | None = None,
        roles: Sequence[str] = (),
        dry_run: bool = False,
    ) -> list[Artifact]:
        """Remove the artifacts matching every given filter (none given: none removed), then
        leftovers of interrupted writes older than an hour. Returns what was (or would be)
        removed."""
        now = time.time()

        def matches(artifact: Artifact) -> bool:
            if older_than_days is None and not roles:
                return False
            age_days = (now - artifact.meta.get("created", now)) / 86400
            old_enough = older_than_days is None or age_days > older_than_days
            return old_enough and (not roles or artifact.meta.get("role") in roles)

        doomed = [a for a in self.list() if matches(a)]
        if not dry_run:
            for artifact in doomed:
                self.remove(artifact.key)
            staging = self.root / "staging"
            for leftover in staging.glob("*") if staging.is_dir() else ():
                if now - leftover.stat().st_mtime > 3600:
                    shutil.rmtree(leftover, ignore_errors=True)
        return doomed
