"""Paper reproduction: the `hpmkd` commands behind every table of METHODS.md section 5 and every
HPM-KD / SMSKD setting, run one after another, then `hpmkd report` (docs/reproduce.md).

    python scripts/reproduce.py crd_table             # the whole section-5 table (GPU)
    python scripts/reproduce.py crd_r56_r20 --dry-run # print the commands, run nothing
    python scripts/reproduce.py smskd --budget        # CPU budget version on offline data

Full runs use the paper's data, recipes and 3 student seeds (one teacher, seed 0, shared through
the store under --out). The budget version runs the very same sweeps with one seed, a few epochs
and offline substitute data: CIFAR settings on a class-balanced subset of the CIFAR-10 JPEG copy
in ../shared/data (unpacked here on the first run), tabular HPM-KD settings on offline tables.
Budget numbers check that the pipeline runs end to end; they are never comparable with papers.
A failing sweep is reported and the others still run; rerunning finishes only what is missing.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HPMKD_SHARED_DATA", REPO.parent / "shared" / "data"))
CIFAR10_JPEG_TAR = SHARED_DATA / "cifar10-jpeg" / "CIFAR-10-images.tar.gz"
BUDGET_IMAGE_FOLDER = "cifar10_jpeg_budget"  # its name is the data name in reports
BUDGET_TRAIN_PER_CLASS = 20
BUDGET_TEST_PER_CLASS = 10

FULL_SEEDS = "0,1,2"
BUDGET_SEEDS = "0"
# the section-5 rows; AB, FT and FSP run in a sweep of their own (their 30-epoch initialisation
# stage is the one method option the budget shortens, and only they have it: `++` because Hydra
# composes a multirun's base config, with the experiment's own method kd, before it sweeps)
CRD_METHODS = "kd,fitnet,at,sp,cc,vid,rkd,pkt,nst,crd,dkd"
CRD_INIT_STAGE_METHODS = "ab,ft,fsp"
CRD_PAIRS = ("r56_r20", "r110_r32", "r32x4_r8x4", "wrn40_2_wrn16_2", "vgg13_vgg8")
HPMKD_ABLATION = "none,acm,pdc,awmt,mts,ppp,som"


@dataclass(frozen=True)
class Sweep:
    """One `hpmkd train -m` call: its folder under the setting's output dir and its overrides."""

    folder: str
    overrides: tuple[str, ...]
    budget_overrides: tuple[str, ...] = ()  # added in the budget version only


@dataclass(frozen=True)
class Setting:
    """The sweeps of one table or setting, and what its budget version runs on."""

    sweeps: tuple[Sweep, ...]
    budget_data: str  # a `data=` option; cifar10_jpeg is read from the budget subset
    budget_epochs: int
    private_store: bool = False  # HPM-KD: the store holds the ACM history, part of the experiment
    folder: str = ""  # under the output dir; default: the setting's name


def crd_pair_sweeps(pair: str, prefix: str = "") -> tuple[Sweep, ...]:
    experiment = f"experiment=crd_cifar100/{pair}"
    return (
        Sweep(f"{prefix}ce", (experiment, "strategy=plain")),
        Sweep(f"{prefix}methods", (experiment, f"method={CRD_METHODS}")),
        Sweep(
            f"{prefix}init_stage",
            (experiment, f"method={CRD_INIT_STAGE_METHODS}"),
            budget_overrides=("++method.init_epochs=1",),
        ),
    )


def hpmkd_sweeps(preset: str) -> tuple[Sweep, ...]:
    """Baselines first, then HPM-KD and one row per component off: the order feeds ACM's history."""
    experiment = f"experiment=hpmkd/{preset}"
    return (
        Sweep("ce", (experiment, "strategy=plain")),
        Sweep("kd", (experiment, "strategy=kd")),
        Sweep("ablation", (experiment, f"ablate={HPMKD_ABLATION}")),
    )


SMSKD_SWEEPS = (
    Sweep("ce", ("experiment=crd_cifar100/r56_r20", "strategy=plain")),
    Sweep("single", ("experiment=crd_cifar100/r56_r20", "method=fitnet,kd,at")),
    Sweep(
        "aggregate",
        ("experiment=crd_cifar100/r56_r20", "strategy=aggregate", "strategy.methods=[fitnet,kd]"),
    ),
    # the SMSKD paper's other baseline, read as spot-adaptive KD (hpmkd/methods/sakd.py)
    Sweep("sakd", ("experiment=crd_cifar100/r56_r20", "method=sakd", "method.base=fitnet,at")),
    Sweep(
        "two_stage",
        (
            "experiment=smskd_cifar100",
            "strategy.weight=teacher_tcp,one_minus_teacher_tcp,reference_tcp,none",
        ),
        budget_overrides=("strategy.transitions=[2]",),
    ),
    Sweep(
        "no_reference",
        ("experiment=smskd_cifar100", "strategy.reference=false"),
        budget_overrides=("strategy.transitions=[2]",),
    ),
    Sweep(
        "three_stage",
        ("experiment=smskd_cifar100_3stage",),
        budget_overrides=("strategy.transitions=[1,2]",),
    ),
)

SETTINGS: dict[str, Setting] = {
    "crd_table": Setting(
        tuple(s for pair in CRD_PAIRS for s in crd_pair_sweeps(pair, f"{pair}/")),
        "cifar10_jpeg",
        1,
    ),
    # one column of the table, in the table's folders: the runs of either are the other's
    **{
        f"crd_{pair}": Setting(crd_pair_sweeps(pair), "cifar10_jpeg", 1, folder=f"crd_table/{pair}")
        for pair in CRD_PAIRS
    },
    "smskd": Setting(SMSKD_SWEEPS, "cifar10_jpeg", 3),
    "hpmkd_cifar10": Setting(hpmkd_sweeps("cifar10_r56_r20"), "cifar10_jpeg", 1, True),
    "hpmkd_cifar100": Setting(hpmkd_sweeps("cifar100_r56_r20"), "cifar10_jpeg", 1, True),
    "hpmkd_cifar100_chain": Setting(hpmkd_sweeps("cifar100_r110_r8"), "cifar10_jpeg", 1, True),
    # offline substitutes of the OpenML tables: binary, binary, multi-class like the originals
    "hpmkd_adult": Setting(hpmkd_sweeps("adult"), "magic", 10, True),
    "hpmkd_credit_g": Setting(hpmkd_sweeps("credit_g"), "breast_cancer", 10, True),
    "hpmkd_wine_quality": Setting(hpmkd_sweeps("wine_quality"), "penbased", 10, True),
}


def commands(name: str, out: Path, budget: bool, seeds: str) -> list[list[str]]:
    """The `hpmkd` command lines of setting ``name``: its sweeps, then the report."""
    setting = SETTINGS[name]
    root = out / (setting.folder or name)
    store = root / "store" if setting.private_store else out / "store"
    common = [f"seed={seeds}", "teacher.seed=0", f"store.root={store}"]
    if budget:
        common += [f"data={setting.budget_data}", f"recipe.epochs={setting.budget_epochs}"]
        if setting.budget_data == "cifar10_jpeg":
            common.append(f"data.root={out / 'data' / BUDGET_IMAGE_FOLDER}")
        common.append("trainer.enable_progress_bar=false")
    lines = []
    for sweep in setting.sweeps:
        extra = sweep.budget_overrides if budget else ()
        sweep_dir = f"hydra.sweep.dir={root / sweep.folder}"
        lines.append(["hpmkd", "train", "-m", *sweep.overrides, *common, *extra, sweep_dir])
    title = f"{name} (budget: CPU, offline substitute data; not comparable)" if budget else name
    lines.append(["hpmkd", "report", str(root), "--out", str(root / "report"), "--title", title])
    return lines


def unpack_budget_images(folder: Path) -> None:
    """The first BUDGET_TRAIN/TEST_PER_CLASS images of every class of the CIFAR-10 JPEG copy."""
    if folder.is_dir():
        return
    if not CIFAR10_JPEG_TAR.is_file():
        sys.exit(f"reproduce: budget image data needs {CIFAR10_JPEG_TAR} (set HPMKD_SHARED_DATA)")
    keep = {"train": BUDGET_TRAIN_PER_CLASS, "test": BUDGET_TEST_PER_CLASS}
    partial = folder.with_name(folder.name + ".partial")
    with tarfile.open(CIFAR10_JPEG_TAR) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        taken: dict[tuple[str, str], int] = {}
        for member in members:
            split, label, file = (None, None, *Path(member.name).parts)[-3:]
            if split in keep and taken.get((split, label), 0) < keep[split]:
                taken[split, label] = taken.get((split, label), 0) + 1
                member.name = f"{split}/{label}/{file}"
                tar.extract(member, partial, filter="data")
    partial.rename(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("setting", choices=sorted(SETTINGS))
    parser.add_argument("--budget", action="store_true", help="tiny CPU version, offline data")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--seeds", default=None, help=f"student seeds (full {FULL_SEEDS})")
    parser.add_argument("--out", type=Path, default=None, help="outputs/reproduce[_budget]")
    opts = parser.parse_args(argv)
    out = opts.out or Path("outputs/reproduce_budget" if opts.budget else "outputs/reproduce")
    seeds = opts.seeds or (BUDGET_SEEDS if opts.budget else FULL_SEEDS)
    lines = commands(opts.setting, out, opts.budget, seeds)
    if opts.dry_run:
        print("\n".join(shlex.join(line) for line in lines))
        return 0
    if opts.budget and SETTINGS[opts.setting].budget_data == "cifar10_jpeg":
        unpack_budget_images(out / "data" / BUDGET_IMAGE_FOLDER)
    failed = 0
    start = time.perf_counter()
    for line in lines:
        began = time.perf_counter()
        code = subprocess.run(line, check=False).returncode
        failed += code != 0
        print(f"[reproduce] {time.perf_counter() - began:.0f} s, exit {code}: {shlex.join(line)}")
    print(f"[reproduce] {opts.setting}: {time.perf_counter() - start:.0f} s, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
