"""`busi-serve --ckpt CKPT_OR_CV_FOLDER [--host 127.0.0.1] [--port 8000]`: a checkpoint (or a busi-cv
folder's fold ensemble) as an HTTP service on LitServe: POST /predict with an image, GET /health, GET /info."""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Literal

from jsonargparse import ArgumentParser

from busi.commands.options import choose_device, command_parser, malignant_threshold, operating_point, parse
from busi.errors import OptionError, run_command


def parser() -> ArgumentParser:
    parser = command_parser(
        "busi-serve",
        "Serve a busi checkpoint over HTTP: POST /predict (an image as the body or a multipart upload), "
        "GET /health, GET /info (its model card).",
        "--ckpt",
        "--device",
        "--malignant_threshold",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind: 127.0.0.1 (this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api_key_env",
        type=str | None,
        default=None,
        help="name of the environment variable holding the API key that requests send as 'Authorization: "
        "Bearer KEY'; required when --host is not a loopback address",
    )
    parser.add_argument("--max_batch_size", type=int, default=8, help="requests answered in one forward pass")
    parser.add_argument(
        "--batch_timeout", type=float, default=0.01, help="seconds a batch waits to fill (0: answer at once)"
    )
    parser.add_argument("--workers", type=int, default=1, help="model processes per device")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait before 504")
    parser.add_argument(
        "--max_queue", type=int, default=64, help="requests in flight at most; the next gets 503 (memory stays bounded)"
    )
    parser.add_argument(
        "--precision",
        default="32",
        type=Literal["32", "bf16"],
        help="bf16: the network answers in bfloat16 (faster on CPUs with AVX-512 BF16 or AMX, and on GPUs; on the "
        "share's 624 images the same labels as float32, probabilities within 0.006: docs/experiments.md); 32: float32",
    )
    parser.add_argument("--max_request_mb", type=float, default=50.0, help="largest request body; larger get 413")
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(args) -> str | None:
    """The API key (None when none is asked); OptionError for options that cannot serve."""
    for name in ("max_batch_size", "workers", "max_queue"):
        if getattr(args, name) < 1:
            raise OptionError(f"--{name} {getattr(args, name)}: must be at least 1")
    if args.batch_timeout < 0 or args.timeout <= 0 or args.max_request_mb <= 0:
        raise OptionError("--batch_timeout must be ≥ 0, --timeout and --max_request_mb > 0")
    if not args.ckpt.exists():
        raise OptionError(f"--ckpt {args.ckpt}: no such checkpoint or busi-cv folder")
    if args.api_key_env is None:
        if not is_loopback(args.host):
            raise OptionError(
                f"--host {args.host}: serving beyond this machine needs an API key; put one in an environment "
                "variable and pass its name with --api_key_env"
            )
        return None
    key = os.environ.get(args.api_key_env, "")
    if not key.strip():
        raise OptionError(f"--api_key_env {args.api_key_env}: that environment variable is empty or not set")
    return key.strip()


def serve(args) -> int:
    threshold = malignant_threshold(args.malignant_threshold)
    api_key = check(args)
    # imported here, not above: --help and option errors come before torch, Lightning and LitServe load
    try:
        import litserve as ls
    except ImportError:
        raise OptionError("busi-serve needs LitServe: pip install 'busi[serve]'") from None

    from busi.model.answering import cpu_has_native_bf16
    from busi.model.classifier import checkpoint_paths
    from busi.model.ensemble import load_model
    from busi.model.identity import identity
    from busi.serving.api import BusiAPI, threads_per_worker
    from busi.serving.guard import Guard
    from busi.serving.info import model_card

    device = choose_device(args.device)
    if args.precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        print(
            "warning: --precision bf16: this CPU has neither AVX-512 BF16 nor AMX, so bfloat16 is emulated and slower "
            "than float32; drop --precision here",
            file=sys.stderr,
        )
    model = load_model(args.ckpt)  # here once: its errors are one line, before any worker starts
    threshold, rule = operating_point(threshold, args.ckpt, model)
    summary = model.members[0].summary
    model_identity = identity(args.ckpt, checkpoint_paths(args.ckpt), summary, model.image_size)
    card = model_card(model_identity, model.class_names, summary, args.ckpt)
    api = BusiAPI(
        args.ckpt,
        model_identity,
        threshold,
        rule,
        threads=threads_per_worker(args.workers) if device.type == "cpu" else None,
        bfloat16=args.precision == "bf16",
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
    )
    del model
    guard = {"max_bytes": int(args.max_request_mb * 2**20), "max_in_flight": args.max_queue, "api_key": api_key}
    server = ls.LitServer(
        api,
        accelerator="cuda" if device.type == "cuda" else "cpu",
        devices=[device.index or 0] if device.type == "cuda" else "auto",
        workers_per_device=args.workers,
        timeout=args.timeout,
        model_metadata=card,
        middlewares=[(Guard, guard)],
    )
    print(
        f"busi-serve: {args.ckpt} ({', '.join(card['classes'])}; "
        f"labels: {rule}; {'bfloat16' if args.precision == 'bf16' else 'float32'}) on http://{args.host}:{args.port}/predict"
        + (" (API key required)" if api_key else ""),
        file=sys.stderr,
    )
    # one HTTP process (LitServe starts one per worker otherwise): --max_queue bounds the whole service
    server.run(host=args.host, port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(parser(), argv)
    return run_command(lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
