"""The teacher prediction cache (part of the shared memory, METHODS.md 2.6).

A frozen teacher's logits depend only on the image it sees, and a training image is determined
by its sample index and its augmentation view (``BatchTransform.augment``: 162 views for CIFAR's
pad-4 crop and flip, 1 without random augmentation). So the logits are cached per (sample, view):
each training step looks its rows up, runs the teacher on the missing rows only and writes them.
The cache fills lazily and lives in the artifact store under everything that determines its
entries (teacher identity and weights, data, transform, precision), so every later run with the
same teacher and data, and every concurrent sweep member, shares it.

Entries are stored in float16 and every row a step returns is rounded to float16, hit or miss:
a step's loss does not depend on what was cached before. The files are memory-mapped with shared
writes: processes that use one cache at once must share a page cache (one machine) or a file
system with coherent shared mappings. Only methods that read teacher logits alone can use it;
feature methods keep the online teacher. Streamed data whose training pipeline is random
(RandomResizedCrop) has no finite set of views: the cache is off for it (``stream_cache_off``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from hpmkd.data.stream import StreamSplits
from hpmkd.data.stream_transforms import is_random
from hpmkd.methods.base import ModelOutputs
from hpmkd.store import ArtifactStore, content_key

if TYPE_CHECKING:
    from hpmkd.engine.module import FrozenTeacher

log = logging.getLogger("hpmkd")

VALUES_FILE = "logits.f16"  # float16 [samples * views, classes], row = index * views + view
FILLED_FILE = "filled.bool"  # bool [samples * views]: which rows hold the teacher's logits


class ViewCache:
    """Memory-mapped teacher logits per (sample index, view id), and which of them are filled."""

    def __init__(self, path: Path, *, samples: int, views: int, classes: int) -> None:
        self.path = path
        self.samples, self.views, self.classes = samples, views, classes
        self._values: Tensor | None = None
        self._filled: Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to spawned DDP workers) without the mappings, which each process opens
        itself: torch would copy a mapped tensor into shared memory."""
        return self.__dict__ | {"_values": None, "_filled": None}

    @staticmethod
    def create_files(path: Path, *, samples: int, views: int, classes: int) -> None:
        """Empty (sparse, zero) files: disk is used only as entries fill."""
        entries = samples * views
        for name, size in ((VALUES_FILE, entries * classes * 2), (FILLED_FILE, entries)):
            with open(path / name, "wb") as file:
                file.truncate(size)

    def _mapped(self) -> tuple[Tensor, Tensor]:
        if self._values is None or self._filled is None:
            entries = self.samples * self.views
            self._values = torch.from_file(
                str(self.path / VALUES_FILE), shared=True, size=entries * self.classes,
                dtype=torch.float16,
            ).view(entries, self.classes)  # fmt: skip
            self._filled = torch.from_file(
                str(self.path / FILLED_FILE), shared=True, size=entries, dtype=torch.bool
            )
        return self._values, self._filled

    def entries(self, index: Tensor, view: Tensor) -> Tensor:
        """Row numbers (on the CPU) of samples ``index`` seen in views ``view``."""
        return (index.to(view.device) * self.views + view).cpu()

    def read(self, entry: Tensor) -> tuple[Tensor, Tensor]:
        """``(hit, logits)``: which rows are filled, and their logits (zero where not)."""
        values, filled = self._mapped()
        hit = filled[entry]
        logits = torch.zeros(len(entry), self.classes, dtype=torch.float16)
        logits[hit] = values[entry[hit]]
        return hit, logits

    def write(self, entry: Tensor, logits: Tensor) -> None:
        """Fill rows ``entry`` (values first, then the flags, so a reader never sees a flag
        before its values)."""
        values, filled = self._mapped()
        values[entry] = logits
        filled[entry] = True

    def close(self) -> None:
        """Drop the mappings (they are opened again on the next read or write)."""
        self._values = self._filled = None


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state: a teacher loaded from a checkpoint path that was overwritten
    since must not read the old teacher's logits."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def open_view_cache(
    store: ArtifactStore, spec: Mapping[str, Any], *, samples: int, views: int, classes: int
) -> ViewCache:
    """The cache for ``spec`` (what determines the teacher's outputs) from the store; created
    empty under the store lock by the first run that needs it."""
    shape = {"samples": samples, "views": views, "classes": classes}
    key = content_key("teacher_cache", {**spec, **shape, "dtype": "float16"})
    with store.lock(key):
        artifact = store.get(key)
        if artifact is None:
            artifact = store.put(
                key,
                lambda path: ViewCache.create_files(path, **shape),
                {"role": "teacher_cache", **spec, **shape, "dtype": "float16"},
            )
            log.info("teacher cache: created (%s, %d samples x %d views)", key[:12], samples, views)
        else:
            log.info("teacher cache: shared from the store (%s)", key[:12])
    return ViewCache(artifact.path, **shape)


class CachedTeacher:
    """Stands in for ``FrozenTeacher`` when a method reads teacher logits only: rows of the
    batch found in the cache are read, the others computed by the online teacher and written.

    Every returned row is rounded to float16, so hit or miss gives the same loss. ``hits`` and
    ``misses`` count rows (teacher forwards per sample) of this process.
    """

    def __init__(self, teacher: FrozenTeacher, cache: ViewCache) -> None:
        self.teacher = teacher
        self.cache = cache
        self.hits = 0
        self.misses = 0

    def to(self, device: torch.device) -> CachedTeacher:
        self.teacher.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: Tensor, index: Tensor, view: Tensor) -> ModelOutputs:
        entry = self.cache.entries(index, view)
        hit, logits = self.cache.read(entry)
        miss = (~hit).nonzero().squeeze(1)
        if len(miss):
            rows = miss.to(x.device)
            computed = self.teacher(x[rows], index[rows], view[rows]).logits.half().cpu()
            self.cache.write(entry[miss], computed)
            logits[miss] = computed
        self.hits += len(entry) - len(miss)
        self.misses += len(miss)
        return ModelOutputs(logits.to(x.device).float())

    def release(self) -> None:
        """Release the online teacher's hooks and the cache's mappings."""
        self.teacher.release()
        self.cache.close()


class CacheCounts(Callback):
    """The hits and misses of the module's ``CachedTeacher`` in one fit, summed over ranks.

    The state stays empty until the fit ends: checkpoints do not carry it (a resumed fit counts
    from the resume), testing a checkpoint after the fit does not overwrite it, and spawned DDP
    workers send it back to the main process with the other callback states.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        teacher = pl_module.teacher  # type: ignore[attr-defined]
        assert isinstance(teacher, CachedTeacher)
        local = torch.tensor([teacher.hits, teacher.misses], device=pl_module.device)
        total = trainer.strategy.reduce(local, reduce_op="sum")
        self.counts = {"hits": int(total[0]), "misses": int(total[1])}

    def state_dict(self) -> dict[str, int]:
        return dict(self.counts)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.counts = dict(state_dict)


def cache_summary(counts: Mapping[str, int]) -> dict[str, Any]:
    """``{hits, misses, saved_fraction}``: the fraction of per-sample teacher forwards saved."""
    hits, misses = counts.get("hits", 0), counts.get("misses", 0)
    lookups = hits + misses
    return {"hits": hits, "misses": misses, "saved_fraction": hits / lookups if lookups else None}


def stream_cache_off(data: Any, augment: bool) -> str | None:
    """Why the cache is off for ``data``, or None when it is exact.

    A streamed training pipeline with a random transform (RandomResizedCrop, ColorJitter,
    RandAugment...) draws its views from a continuum, so (sample, view) names no finite set of
    images: the cache is off for it. A deterministic streamed pipeline has one view per sample,
    and the data fingerprint (which holds the pipelines) keys it.
    """
    if not isinstance(data, StreamSplits) or not augment:
        return None
    train = data.transforms.get("train")
    if not is_random(train):
        return None
    return (
        "the streamed training pipeline draws random views (data.transforms.train), so no "
        "finite set of (sample, view) keys names the images the teacher sees; the teacher "
        "runs online"
    )
