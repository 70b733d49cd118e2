"""CPU prediction time per 1,000 rows: stored tabular teachers against MLPs (docs/tabular.md).

For each table, every ``tabular_teacher`` artifact of the store fitted on it (its
``estimator.pkl``: ``predict_proba``) and the MLPs ``mlp_large`` and ``mlp_small`` (one forward
under ``torch.no_grad``; untrained weights time the same as trained ones) predict the same 1,000
test rows (tiled when the split is smaller). One warm-up call each, then ``--repeats`` rounds,
each timing every model once in turn (interleaved); the median per model. Torch and OpenMP run
one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``).

    OMP_NUM_THREADS=1 flock /tmp/hpmkd-bench.lock python scripts/tabular_latency.py \\
        --store ~/.cache/hpmkd/store letter magic penbased
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", help="conf/data options (letter, magic, penbased)")
    parser.add_argument("--store", required=True, help="the artifact store the teachers are in")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--shared-data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()

    import numpy as np
    import torch
    from machine import cpu_name
    from omegaconf import OmegaConf

    from hpmkd.data import load_data
    from hpmkd.models import build_model, count_parameters

    torch.set_num_threads(1)
    print(f"cpu: {cpu_name()}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch 1 thread")
    artifacts = [json.loads(p.read_text()) | {"dir": p.parent}
                 for p in Path(args.store).expanduser().glob("objects/*/*/meta.json")]  # fmt: skip
    print("| table | model | size | ms per 1,000 rows (median) |")
    print("|---|---|---|---|")
    for table in args.tables:
        node = OmegaConf.load(ROOT / "conf" / "data" / f"{table}.yaml")
        node.path = f"{args.shared_data}/tabular/{table}.csv"
        data = load_data(node)
        rows = np.resize(data.x_test.numpy(), (1000, data.x_test.shape[1])).astype(np.float32)
        x = torch.from_numpy(rows)
        models = {}
        for meta in artifacts:
            if meta.get("estimator") and meta.get("data") == data.fingerprint():
                estimator = pickle.loads((meta["dir"] / "estimator.pkl").read_bytes())
                label = f"{meta['estimator'].rpartition('.')[2]} (oof_folds={meta['oof_folds']})"
                size = f"{meta['cost']['nodes']:,} nodes, {meta['cost']['size_bytes'] / 1e6:.1f} MB"
                models[label] = (lambda e=estimator, r=rows: e.predict_proba(r), size)
        shape = {"num_classes": data.num_classes, "input_shape": data.input_shape}
        for name in ("mlp_large", "mlp_small"):
            net = build_model(name, **shape).eval()
            size = f"{count_parameters(net):,} parameters"
            models[name] = (lambda n=net, r=x: _forward(n, r), size)
        times: dict[str, list[float]] = {label: [] for label in models}
        for predict, _ in models.values():
            predict()  # warm-up
        for _ in range(args.repeats):
            for label, (predict, _) in models.items():
                started = time.perf_counter()
                predict()
                times[label].append(time.perf_counter() - started)
        for label, (_, size) in models.items():
            ms = 1000 * statistics.median(times[label])
            print(f"| {table} | {label} | {size} | {ms:.2f} |")


def _forward(net, x):
    import torch

    with torch.no_grad():
        return net(x)


if __name__ == "__main__":
    main()
