"""busi-serve's LitAPI: each request's image decoded as busi-predict decodes a file, the requests of a
batch answered together by the model's `predict_step` (the one answering path), and each answer as JSON.
A request that cannot be answered gets its own error status; the others of its batch are answered."""

# no `from __future__ import annotations`: LitServe reads decode_request's annotation (ImageRequest) at
# run time to build the endpoint
import base64
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import litserve as ls
import torch
from pydantic import BaseModel
from starlette.responses import JSONResponse

from busi.callbacks.prediction_writer import lesion_mask, mask_image
from busi.data.files import Prediction, decode_rows
from busi.errors import ImageTooLargeError, NotAnImageError, UnreadableImageError
from busi.evaluation.conformal import prediction_sets, refers, stored_thresholds
from busi.evaluation.measurements import lesions
from busi.evaluation.operating_point import decided_class
from busi.io.dicom import DEFAULT_OPTIONS, DicomOptions
from busi.serving.info import WARNING

BODY = Path("request body")  # how error lines name the image: a request never names a file busi would read


class ImageRequest(BaseModel):
    """What busi.serving.guard.Guard makes of a request: the image's bytes (base64) and whether to send
    the lesion mask back."""

    image: str
    mask: bool = False


@dataclass
class Rejected:
    status: int
    detail: str


@dataclass
class Decoded:
    row: Prediction
    pixels: torch.Tensor  # uint8 (1, 3, S, S)
    mask: bool


def status_of(error: UnreadableImageError) -> int:
    if isinstance(error, ImageTooLargeError):
        return 413
    return 415 if isinstance(error, NotAnImageError) else 400


class BusiAPI(ls.LitAPI):
    """The model of `ckpt` (a checkpoint or a busi-cv folder) answering POST /predict. `identity` is
    added to every answer, `threshold` (with `rule`, its origin) is the malignant operating point."""

    def __init__(
        self,
        ckpt: Path,
        identity: dict,
        threshold: float | None = None,
        rule: str = "the most probable class",
        dicom: DicomOptions = DEFAULT_OPTIONS,
        threads: int | None = None,
        bfloat16: bool = False,
        max_batch_size: int = 8,
        batch_timeout: float = 0.01,
    ):
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.ckpt, self.identity, self.threshold, self.rule = Path(ckpt), identity, threshold, rule
        self.dicom, self.threads, self.bfloat16 = dicom, threads, bfloat16

    def setup(self, device: str) -> None:
        from busi.model.answering import answer_in_bfloat16
        from busi.model.ensemble import load_model

        if self.threads:
            torch.set_num_threads(self.threads)
        self.model = load_model(self.ckpt, map_location=device).to(device).eval()
        if self.bfloat16:
            answer_in_bfloat16(self.model)
        self.sets = stored_thresholds(self.ckpt, self.model.members[0].summary, self.model.class_names)
        self.device_name = device
        # warm-up: /health says ready only once the model has answered an image
        start, size = time.perf_counter(), self.model.image_size
        warm = Decoded(Prediction(BODY, size=(size, size)), torch.zeros((1, 3, size, size), dtype=torch.uint8), False)
        self.predict([warm])
        seconds = time.perf_counter() - start
        print(f"busi-serve: a worker on {device} answered its warm-up image in {seconds:.2f} s", file=sys.stderr)

    def decode_request(self, request: ImageRequest) -> Decoded | Rejected:
        try:
            data = base64.b64decode(request.image, validate=True)
        except ValueError:
            return Rejected(400, "the image field is not base64")
        if request.mask and not self.model.segments:
            return Rejected(400, f"mask=true: {self.ckpt} has no lesion decoder; leave mask out")
        try:
            rows, pixels = decode_rows(BODY, self.model.image_size, self.dicom, data=data, overlays=self.model.overlays)
        except UnreadableImageError as error:
            return Rejected(status_of(error), str(error))
        return Decoded(rows[0], pixels, request.mask)

    def batch(self, inputs: list[Decoded | Rejected]) -> list[Decoded | Rejected]:
        return inputs  # predict stacks the readable ones: the rejected keep their place

    def predict(self, inputs: list[Decoded | Rejected] | Decoded | Rejected) -> list | tuple | Rejected:
        if not isinstance(inputs, list):  # --max_batch_size 1: LitServe passes one request, unbatched
            return self.predict([inputs])[0]
        readable = [item for item in inputs if isinstance(item, Decoded)]
        if not readable:
            return inputs
        pixels = torch.cat([item.pixels for item in readable]).to(self.device_name)
        with torch.inference_mode():
            outputs = self.model.predict_step({"pixels": pixels})
        probabilities = outputs.probabilities.cpu().tolist()
        lesions = None if outputs.lesions is None else outputs.lesions.cpu().numpy()
        answers = iter(range(len(readable)))
        results = []
        for item in inputs:
            if isinstance(item, Rejected):
                results.append(item)
                continue
            k = next(answers)
            results.append((item, probabilities[k], None if lesions is None else lesions[k]))
        return results

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output) -> JSONResponse:
        if isinstance(output, Rejected):
            return JSONResponse({"detail": output.detail}, status_code=output.status)
        item, probabilities, lesion = output
        names = self.model.class_names
        best = decided_class(probabilities, names, self.threshold)
        row = item.row
        answer = {
            "label": names[best],
            "confidence": probabilities[best],
            "probabilities": dict(zip(names, probabilities, strict=True)),
            "decision": self.rule
            if self.threshold is None
            else f"malignant when p_malignant ≥ {self.threshold:.4f} ({self.rule})",
            "image": {
                "width": row.size[0],
                "height": row.size[1],
                "frame": row.frame,
                "frames": row.frames,
                "pixel_spacing_mm": list(row.spacing_mm) if row.spacing_mm else None,
            },
            "note": row.note,
            **({"prediction_set": self.prediction_set(probabilities, best)} if self.sets else {}),
            "model": self.identity,
            "warning": WARNING,
        }
        if lesion is not None:  # a model with the lesion decoder: its lesions measured, the mask when asked
            mask = lesion_mask(lesion, row.size)
            answer["lesions"] = [found.as_dict() for found in lesions(mask, row.spacing_mm)]
        if item.mask:
            png = io.BytesIO()
            mask_image(mask).save(png, format="PNG")
            answer["mask_png_base64"] = base64.b64encode(png.getvalue()).decode("ascii")
        return JSONResponse(answer)

    def prediction_set(self, probabilities: list[float], best: int) -> dict:
        """The classes the scan may be at the model's promised coverage, and whether to refer
        (busi.evaluation.conformal), as busi-predict's prediction_set and refer columns give them."""
        thresholds, rule = self.sets
        members = prediction_sets(torch.tensor([probabilities]), thresholds)
        names = self.model.class_names
        return {
            "classes": [n for n, inside in zip(names, members[0].tolist(), strict=True) if inside],
            "refer": bool(refers(members, torch.tensor([best]))[0]),
            "rule": rule,
        }


def threads_per_worker(workers: int) -> int:
    """Each CPU worker's share of the cores."""
    return max(1, (os.cpu_count() or 1) // workers)
