"""How leaky in-sample soft labels are: the stored tabular teachers' labels against the true ones.

For each ``tabular_teacher`` artifact of the store fitted on a table, the accuracy, mean top
probability and NLL of its training-row soft labels (out of fold, or in sample with
``oof_folds=0``) and of its test-row ones (docs/tabular.md).

    python scripts/tabular_leakage.py --store <store> magic penbased
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+")
    parser.add_argument("--store", required=True)
    parser.add_argument("--shared-data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args()

    import numpy as np
    from omegaconf import OmegaConf

    from hpmkd.data import load_data

    metas = sorted(Path(args.store).expanduser().glob("objects/*/*/meta.json"))
    for table in args.tables:
        node = OmegaConf.load(ROOT / "conf" / "data" / f"{table}.yaml")
        node.path = f"{args.shared_data}/tabular/{table}.csv"
        data = load_data(node)
        for meta_file in metas:
            meta = json.loads(meta_file.read_text())
            if meta.get("data") != data.fingerprint() or "estimator" not in meta:
                continue
            labels = np.load(meta_file.parent / "soft_labels.npz")
            row = [table, meta["estimator"].rpartition(".")[2], f"oof_folds={meta['oof_folds']}"]
            for split, y in (("train", data.y_train.numpy()), ("test", data.y_test.numpy())):
                lp = labels[split]
                row.append(
                    f"{split}: acc {100 * (lp.argmax(1) == y).mean():.2f} %, mean max p "
                    f"{np.exp(lp).max(1).mean():.3f}, NLL {-lp[np.arange(len(y)), y].mean():.3f}"
                )
            print(" | ".join(row))


if __name__ == "__main__":
    main()
