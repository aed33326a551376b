"""The ``etl-engine`` subcommands this package adds (``etl_engine.commands`` entry points)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_generate_samples(sub: Any) -> None:
    gen = sub.add_parser("generate-samples", help="write realistic sample Avro files "
                         "(written with the phone app's own writer schemas)")
    gen.add_argument("--out", required=True, help="output folder ({RecordType}/*.avro, bad/)")
    gen.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    gen.add_argument("--no-bad", action="store_true", help="skip the deliberately bad files")
    gen.set_defaults(fn=_generate_samples)


def _generate_samples(args: argparse.Namespace) -> int:
    from etl_devtools.samples import generate_samples

    paths = generate_samples(Path(args.out), args.seed, bad=not args.no_bad)
    print(f"wrote {len(paths)} files under {args.out}")
    return 0


def add_bench(sub: Any) -> None:
    from etl_devtools.bench import add_arguments  # argparse and stdlib only at import

    bench_p = sub.add_parser("bench", help="benchmark: decode floor, storage ceiling, the "
                             "fleet, large files (prints figures; docs/performance.md)")
    add_arguments(bench_p)
    bench_p.set_defaults(fn=_bench)


def _bench(args: argparse.Namespace) -> int:
    from etl_devtools import bench

    return bench.run(args)
