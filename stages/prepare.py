"""DVC stage `prepare`: data checks, split manifests, normalisation statistics, split summary."""

import sys
from pathlib import Path

from rts.config import load_params
from rts.data.prepare import prepare
from rts.data.store import DEFAULT_CACHE_DIR
from rts.errors import exit_on_error
from rts.logs import configure


def main() -> int:
    configure()
    params = load_params("params.yaml")
    summary = prepare(
        params.data,
        params.prepare,
        seed=params.seed,
        out_dir=Path("prepared"),
        metrics_path=Path("metrics/prepare.json"),
        cache_dir=DEFAULT_CACHE_DIR if params.data.cache else None,
    )
    for split in ("train", "val_balanced", "val_realistic", "test_realistic"):
        s = summary[split]
        print(f"{split:15s} {s['n_pos']:6d} pos {s['n_neg']:6d} neg  RTS pixel fraction {s['rts_pixel_fraction']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(exit_on_error(main))
