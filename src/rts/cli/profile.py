"""`rts profile`: measure peak memory and step time; find the largest batch that fits."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from rts.config import Params, load_params
from rts.io import write_json_atomic
from rts.training.profile import GIB, StepSetup, profile, resolve_device

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (model, data, train, optim sections)")
    parser.add_argument("--arch", default=None, help="override model.arch")
    parser.add_argument("--encoder", default=None, help="override model.encoder")
    parser.add_argument("--extra-channels", nargs="*", default=None, help="override data.extra_channels (e.g. ndvi re)")
    parser.add_argument("--tile-size", type=int, default=None, help="override data.tile_size")
    parser.add_argument("--batch-size", type=int, nargs="+", default=None,
                        help="batch size(s) to measure (default train.batch_size); with --find-max-batch the search start (default 1)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="override train.mixed_precision")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="override train.channels_last")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="override train.compile")
    parser.add_argument("--find-max-batch", action="store_true", help="search the largest batch that fits the memory budget")
    parser.add_argument("--max-batch", type=int, default=1024, help="upper limit of the search")
    parser.add_argument("--safety", type=float, default=0.85, help="fraction of device memory a run may use")
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="memory budget in GiB (default: safety x GPU memory, or safety x available RAM on CPU)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per batch size")
    parser.add_argument("-o", "--out", type=Path, required=True, metavar="JSON", help="write the profile JSON here")


def setup_from_args(args: argparse.Namespace) -> tuple[StepSetup, Params]:
    """Params file plus command-line overrides; the overridden model section is re-validated."""
    params = load_params(args.params)
    model_kw = {k: v for k, v in (("arch", args.arch), ("encoder", args.encoder)) if v is not None}
    model = dataclasses.replace(params.model, **model_kw, encoder_weights=None)
    data_kw: dict[str, Any] = {}
    if args.tile_size is not None:
        data_kw["tile_size"] = args.tile_size
    if args.extra_channels is not None:
        data_kw["extra_channels"] = list(args.extra_channels)
    data = dataclasses.replace(params.data, **data_kw)  # re-runs DataConfig validation
    setup = dataclasses.replace(
        StepSetup.from_params(params), model=model, tile_size=data.tile_size, extra_channels=tuple(data.extra_channels),
        **{k: v for k, v in (("mixed_precision", args.amp), ("channels_last", args.channels_last), ("compile", args.compile)) if v is not None},
    )
    return setup, params


def run(args: argparse.Namespace) -> int:
    setup, params = setup_from_args(args)
    device = resolve_device(args.device)
    if args.batch_size is not None:
        batch_sizes = args.batch_size
    else:
        batch_sizes = [1] if args.find_max_batch else [params.train.batch_size]
    budget = None if args.memory_budget_gb is None else int(args.memory_budget_gb * GIB)
    report = profile(
        setup, device=device, batch_sizes=batch_sizes, find_max=args.find_max_batch, max_batch=args.max_batch,
        safety=args.safety, memory_budget_bytes=budget,
        pos_fraction=params.sampler.pos_fraction_per_batch if params.sampler.balanced else None,
        steps=args.steps, warmup=args.warmup,
    )
    write_json_atomic(args.out, report)
    for t in report["trials"]:
        mem = "-" if t["peak_memory_bytes"] is None else f"{t['peak_memory_bytes'] / GIB:.3f} GiB"
        speed = "OOM" if t["oom"] else f"{t['step_time_s']:.4f} s/step {t['images_per_s']:.1f} img/s"
        print(f"batch {t['batch_size']:>5}: {speed:<32} peak {mem:<12} {'fits' if t['fits'] else 'does not fit'}")
    if report["batch_size"] is None:
        log.error("no batch size fits the budget of %.3f GiB (see %s)", report["memory_budget_bytes"] / GIB, args.out)
        return 1
    print(f"# {report['device_name']}, budget {report['memory_budget_bytes'] / GIB:.2f} GiB; put into params.yaml:")
    print(report["params_snippet"], end="")
    log.info("wrote %s", args.out)
    return 0
