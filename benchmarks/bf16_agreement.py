"""Does answering in bfloat16 change busi's answers? Every image of a folder answered by the same model
in float32 and under bf16 autocast (busi-serve --precision bf16), through the one answering path
(`busi.model.answering.answer`): labels that differ, the largest and mean change of a probability, and
the seconds each took (bf16 is emulated, and slower, on CPUs without AVX-512 BF16 or AMX).

    python -m benchmarks.bf16_agreement --ckpt CKPT_OR_CV_FOLDER [--root BUSI_ROOT] [--device cpu]

It keeps bf16 by the rule busi-serve documents: the same label for every image and probabilities within 1e-2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from benchmarks.fuzz_inputs import BUSI
from busi.data.files import file_loader, image_files
from busi.model.answering import answer, answer_in_bfloat16, cpu_has_native_bf16
from busi.model.ensemble import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--root", type=Path, default=BUSI)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    files = list(image_files([args.root]))
    answers, seconds = {}, {}
    for precision in ("float32", "bfloat16"):
        model = load_model(args.ckpt, map_location=args.device).eval()
        if precision == "bfloat16":
            answer_in_bfloat16(model)
        loader = file_loader(files, model.image_size, batch_size=16)
        start = time.perf_counter()
        answers[precision] = answer(model, loader).probabilities
        seconds[precision] = time.perf_counter() - start
    fp32, bf16 = answers["float32"], answers["bfloat16"]
    changed = (fp32.argmax(1) != bf16.argmax(1)).sum().item()
    difference = (fp32 - bf16).abs()
    native = torch.cuda.is_available() if args.device.startswith("cuda") else cpu_has_native_bf16()
    print(
        f"{len(fp32)} images of {args.root}, {args.ckpt} on {args.device} (bfloat16 {'native' if native else 'emulated'})"
    )
    print(f"labels changed: {changed}; probability change: max {difference.max():.2e}, mean {difference.mean():.2e}")
    print(f"seconds: float32 {seconds['float32']:.1f}, bfloat16 {seconds['bfloat16']:.1f}")
    kept = changed == 0 and difference.max() <= 1e-2
    print("bf16 kept: same labels, probabilities within 1e-2" if kept else "bf16 not kept on this model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
