"""`paretopipe models | splits | verify | shard`: what can be cut, where, and proof that it works."""

from __future__ import annotations

import argparse
import json
import sys
import time

from paretopipe.errors import ConfigError
from paretopipe.models import DEFAULT_NUM_CLASSES, DEFAULT_SEED
from paretopipe.verification import VERIFY_TOLERANCE, verify_splits

#: Largest max-abs difference between the unsplit logits and the composed stages' logits that
#: `verify` accepts, relative to the logits' own scale (fp32, eval mode): |a - b| <= TOL * max(1, |a|max).


def add_model_options(parser: argparse.ArgumentParser, *, weights: bool = True) -> None:
    """Options shared by every command that builds a model."""
    parser.add_argument(
        "--num-classes",
        type=int,
        default=DEFAULT_NUM_CLASSES,
        help=f"classifier outputs (default {DEFAULT_NUM_CLASSES}, as for CIFAR-10)",
    )
    parser.add_argument(
        "--input-size", type=int, default=None, help="square input side in px (default: the model's)"
    )
    if weights:
        parser.add_argument(
            "--weights",
            default=None,
            metavar="PATH",
            help="state_dict checkpoint (loaded with weights_only=True); default: random init by --seed",
        )
        parser.add_argument(
            "--seed", type=int, default=DEFAULT_SEED, help=f"seed for random weights and inputs (default {DEFAULT_SEED})"
        )


def parse_split_list(text: str, num_blocks: int, model: str) -> list[int]:
    """``all`` or a comma-separated list of split indices, each checked against ``0..num_blocks``."""
    if text.strip().lower() == "all":
        return list(range(num_blocks + 1))
    result = []
    for part in text.split(","):
        part = part.strip()
        try:
            k = int(part)
        except ValueError:
            raise ConfigError(f"--splits takes 'all' or integers like 0,4,9 (got {part!r})") from None
        if not 0 <= k <= num_blocks:
            raise ConfigError(
                f"split {k} is out of range for {model} (valid: 0..{num_blocks}); "
                f"see `paretopipe splits {model}`"
            )
        result.append(k)
    return result


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}P"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def cmd_models(args: argparse.Namespace) -> int:
    from paretopipe.models import all_model_names, get_model_info, model_names
    from paretopipe.splitting import num_blocks

    names = all_model_names() if args.all else model_names()
    rows = []
    for name in names:
        info = get_model_info(name)
        row = {
            "name": name,
            "input_size": info.input_size,
            "num_classes": args.num_classes,
            "named": info.named,
        }
        try:
            row["split_points"] = num_blocks(name, num_classes=args.num_classes) + 1
            row["error"] = None
        except ConfigError:
            raise
        except Exception as exc:  # a model that cannot be cut is listed with the reason
            row["split_points"] = None
            row["error"] = str(exc)
        rows.append(row)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'model':<24} {'input':>5} {'classes':>7} {'split points':>12}")
    for row in rows:
        points = row["split_points"] if row["split_points"] is not None else "-"
        print(f"{row['name']:<24} {row['input_size']:>5} {row['num_classes']:>7} {points:>12}")
        if row["error"]:
            print(f"    cannot cut: {row['error']}")
    print("\nsplit points include both ends: k=0 (all offloaded) and k=N (all local).")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from paretopipe.splitting import split_points

    points = split_points(
        args.model, num_classes=args.num_classes, input_size=args.input_size, batch_size=args.batch_size
    )
    if args.json:
        json.dump([p.as_dict() for p in points], sys.stdout, indent=2)
        print()
        return 0
    print(
        f"{args.model}: {len(points)} split points (k = 0..{len(points) - 1}; "
        f"blocks [0, k) on the first device), batch {args.batch_size}"
    )
    print(
        f"{'k':>3}  {'boundary':<28} {'crossing shape':<22} {'bytes/batch':>12} "
        f"{'params head':>11} {'params tail':>11} {'FLOPs head':>10} {'FLOPs tail':>10}"
    )
    for p in points:
        print(
            f"{p.index:>3}  {p.boundary:<28} {str(list(p.shape)):<22} {_bytes(p.bytes):>12} "
            f"{_human(p.params_head):>11} {_human(p.params_tail):>11} "
            f"{_human(p.flops_head):>10} {_human(p.flops_tail):>10}"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from paretopipe.splitting import num_blocks

    n = num_blocks(args.model, num_classes=args.num_classes)
    splits = parse_split_list(args.splits, n, args.model)
    if args.tolerance <= 0:
        raise ConfigError("--tolerance must be positive")
    print(
        f"verifying {args.model}: {len(splits)} split point(s), input {args.input_size or 'default'} px, "
        f"batch {args.batch_size}, seed {args.seed}, tolerance {args.tolerance:g} x max(1, |logits|)"
        + (f", stages from shards in {args.shards}" if args.shards else ""),
        flush=True,
    )
    start = time.monotonic()

    def show(k: int, diff: float, ok: bool) -> None:
        print(f"  split {k:>3}: max abs diff {diff:.3e}  {'ok' if ok else 'FAIL'}", flush=True)

    results = verify_splits(
        args.model,
        splits,
        num_classes=args.num_classes,
        input_size=args.input_size,
        weights=args.weights,
        seed=args.seed,
        batch_size=args.batch_size,
        tolerance=args.tolerance,
        shards=args.shards,
        progress=show,
    )
    failed = [k for k, _, ok in results if not ok]
    took = time.monotonic() - start
    if failed:
        print(f"{args.model}: {len(failed)} split(s) differ beyond tolerance: {failed} ({took:.1f}s)")
        return 1
    print(f"{args.model}: all {len(results)} split(s) reproduce the unsplit output ({took:.1f}s)")
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from paretopipe.shards import write_shards

    print(f"writing shards of {args.model} to {args.out} ...", file=sys.stderr)
    path = write_shards(
        args.model,
        args.out,
        num_classes=args.num_classes,
        weights=args.weights,
        seed=args.seed,
        input_size=args.input_size,
    )
    manifest = json.loads(path.read_text())
    total = sum(b["bytes"] for b in manifest["blocks"])
    print(f"{len(manifest['blocks'])} block shards ({_bytes(total)}) and {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list the models and their split points")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all", action="store_true", help="every torchvision classifier, not only the six named")
    p.add_argument("--num-classes", type=int, default=DEFAULT_NUM_CLASSES, help="classifier outputs (default 10)")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser(
        "splits",
        help="list every split point of a model",
        description="List every split point k = 0..N: blocks [0, k) run on the first device.",
    )
    p.add_argument("model", help="model name (see `paretopipe models`)")
    add_model_options(p, weights=False)
    p.add_argument("--batch-size", type=int, default=1, help="batch size for the byte counts (default 1)")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_splits)

    p = subparsers.add_parser(
        "verify",
        help="prove every split point reproduces the unsplit model",
        description=(
            "Build the stages of each split point, run one seeded input through the unsplit model "
            "and through the composed stages (fp32, eval mode), print the max abs difference, and "
            f"exit 1 if any exceeds TOLERANCE x max(1, max |logit|) (default {VERIFY_TOLERANCE:g})."
        ),
    )
    p.add_argument("model", help="model name (see `paretopipe models`)")
    add_model_options(p)
    p.add_argument("--splits", default="all", help="'all' (default) or a list like 0,4,9")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the seeded input (default 2)")
    p.add_argument("--tolerance", type=float, default=VERIFY_TOLERANCE, help="relative tolerance")
    p.add_argument(
        "--shards", default=None, metavar="DIR", help="load the stages from this shard directory (checks the shards too)"
    )
    p.set_defaults(func=cmd_verify)

    p = subparsers.add_parser(
        "shard",
        help="write per-block weight shards (safetensors + manifest)",
        description="Write each block's weights as safetensors plus a checksummed manifest.json. "
        "One push of the directory to a device serves every split point.",
    )
    p.add_argument("model", help="model name (see `paretopipe models`)")
    p.add_argument("--out", required=True, help="output directory")
    add_model_options(p)
    p.set_defaults(func=cmd_shard)
