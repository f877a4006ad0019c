"""busi as a DICOM node (pynetdicom): a Storage SCP that answers C-ECHO and accepts scans from any number
of associations, writes each received instance to a spool folder before its C-STORE is answered, then
classifies the spool in batches through the one answering path and writes (and sends, as a C-STORE SCU)
its SR and SEG (and, when asked, a Secondary Capture). After a crash or a restart it finishes the spool; results have UIDs fixed by what they
answer, so an instance answered twice is one object in the archive."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from busi.archive.results import is_busi_result
from busi.callbacks.prediction_writer import predict_files
from busi.evaluation.operating_point import decided_class

log = logging.getLogger("busi.node")
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        """HOST:PORT:AET; ValueError saying what is wrong."""
        host, port, ae_title = text.rsplit(":", 2)
        if not host or not port.isdigit() or not ae_title:
            raise ValueError(f"{text}: give HOST:PORT:AET, e.g. 127.0.0.1:4242:ORTHANC")
        return cls(host, int(port), ae_title)


class Spool:
    """incoming/ (received, not yet answered), done/, skipped/ (no answer possible); files named by SOP Instance UID."""

    def __init__(self, folder: Path):
        self.incoming, self.done, self.skipped = (folder / name for name in ("incoming", "done", "skipped"))
        for path in (self.incoming, self.done, self.skipped):
            path.mkdir(parents=True, exist_ok=True)

    def put(self, dataset: pydicom.Dataset) -> Path:
        """Write atomically (a crash leaves no half file where the next start would read it)."""
        path = self.incoming / f"{dataset.SOPInstanceUID}.dcm"
        partial = path.with_suffix(".part")
        dataset.save_as(partial, enforce_file_format=True)
        partial.replace(path)
        return path

    def pending(self) -> list[Path]:
        return sorted(self.incoming.glob("*.dcm"), key=lambda p: p.stat().st_mtime)

    def finish(self, path: Path, skipped: bool = False) -> None:
        path.replace((self.skipped if skipped else self.done) / path.name)


class Node:
    """The SCP, the worker that answers the spool, and the SCU that sends the results."""

    def __init__(
        self,
        model,
        model_identity: dict,
        spool: Spool,
        output: Path,
        ae_title: str = "BUSI",
        send: Destination | None = None,
        batch_size: int = 8,
        malignant_threshold: float | None = None,
        modalities: tuple[str, ...] = (),
        dicom_capture: bool = False,
    ):
        self.model, self.model_identity, self.spool, self.output = model, model_identity, spool, output
        self.ae_title, self.send, self.batch_size, self.threshold = ae_title, send, batch_size, malignant_threshold
        self.modalities = tuple(modalities)  # empty: every modality
        self.dicom_capture = dicom_capture
        self.output.mkdir(parents=True, exist_ok=True)
        self._wake, self._stop = threading.Event(), threading.Event()
        self.ae = AE(ae_title=ae_title)
        for context in StoragePresentationContexts:  # compressed too: scanners send JPEG; what busi cannot
            self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)  # decode gets its line
        self.ae.add_supported_context(Verification)

    # -- receiving --------------------------------------------------------------------------------
    def on_store(self, event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        source = event.assoc.requestor.ae_title
        uid = dataset.get("SOPInstanceUID", "?")
        if is_busi_result(dataset):
            log.info("%s %s: ignored (a result busi wrote)", source, uid)
            return SUCCESS
        if "PixelData" not in dataset:
            log.info("%s %s: skipped (no pixel data: %s)", source, uid, dataset.get("SOPClassUID", "no SOP class"))
            return SUCCESS
        if self.modalities and dataset.get("Modality") not in self.modalities:
            log.info("%s %s: skipped (modality %s; this node answers %s)", source, uid, dataset.get("Modality", "none"),
                     ", ".join(self.modalities))  # fmt: skip
            return SUCCESS
        dataset.file_meta.SourceApplicationEntityTitle = source  # for the line that gives its result
        try:
            self.spool.put(dataset)
        except OSError as error:
            log.error("%s %s: not stored (%s); the sender may retry", source, uid, error.strerror or error)
            return OUT_OF_RESOURCES
        self._wake.set()
        return SUCCESS

    # -- answering --------------------------------------------------------------------------------
    def answer_pending(self) -> int:
        """One batch of the spool answered, its results written and sent in one association (all of them or,
        when the destination fails, none: the batch stays in the spool); how many instances."""
        batch = self.spool.pending()[: self.batch_size]
        if not batch:
            return 0
        rows = predict_files(
            self.model, batch, dicom_out=self.output, model_identity=self.model_identity,
            malignant_threshold=self.threshold, dicom_capture=self.dicom_capture,
        )  # fmt: skip
        by_path: dict[Path, list] = {}
        for row in rows:
            by_path.setdefault(row.path, []).append(row)
        results = [result for row in rows if not row.error for result in row.dicom_results or []]
        sent = self._send(results) if results and self.send else ""
        for path in batch:
            for row in by_path.get(path, []):
                self._log(path, row, sent)
            self.spool.finish(path, skipped=any(row.error for row in by_path.get(path, [])))
        return len(batch)

    def _log(self, path: Path, row, sent: str) -> None:
        source = pydicom.dcmread(path, stop_before_pixels=True).file_meta.get("SourceApplicationEntityTitle", "?")
        if row.error:
            log.info("%s %s: skipped (%s)", source, path.stem, row.error.split(": ", 1)[-1])
            return
        results = row.dicom_results or []
        names = self.model.class_names
        best = decided_class(row.probabilities, names, self.threshold)
        sent = sent if results else ""
        log.info(
            "%s %s: %s %.1f%% → %s%s%s", source, path.stem, names[best], 100 * row.probabilities[best],
            ", ".join(p.name for p in results) or "no results", sent, f" ({row.note})" if row.note else "",
        )  # fmt: skip

    def _send(self, results: list[Path]) -> str:
        datasets = [pydicom.dcmread(path) for path in results]
        scu = AE(ae_title=self.ae_title)
        for sop_class in {d.SOPClassUID for d in datasets}:
            scu.add_requested_context(sop_class)
        association = scu.associate(self.send.host, self.send.port, ae_title=self.send.ae_title)
        if not association.is_established:
            raise ConnectionError(f"{self.send.ae_title} at {self.send.host}:{self.send.port} refused the association")
        try:
            for dataset in datasets:
                status = association.send_c_store(dataset)
                if not status or status.Status != SUCCESS:
                    raise ConnectionError(f"{self.send.ae_title} refused {dataset.SOPInstanceUID}")
        finally:
            association.release()
        return f", sent to {self.send.ae_title}"

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                if self.answer_pending():
                    continue
            except ConnectionError as error:  # the destination is away: the spool keeps the instances
                log.error("sending failed (%s); retrying in 5 s", error)
                self._stop.wait(5)
                continue
            except Exception as error:  # the node goes on; the batch stays in the spool for the next try
                log.exception("answering the spool failed (%s: %s); retrying in 5 s", type(error).__name__, error)
                self._stop.wait(5)
                continue
            self._wake.wait(1.0)
            self._wake.clear()

    # -- running ----------------------------------------------------------------------------------
    def serve(self, host: str, port: int) -> None:
        """Until interrupted: the spool left by an earlier run first, then whatever arrives."""
        pending = len(self.spool.pending())
        if pending:
            log.info("%d instances in the spool from an earlier run: answering them first", pending)
        worker = threading.Thread(target=self._work, name="busi-node-answers", daemon=True)
        worker.start()
        server = self.ae.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        log.info("busi-node %s listening on %s:%d", self.ae_title, host, port)
        try:
            while worker.is_alive():
                time.sleep(0.5)
        finally:
            self._stop.set()
            self._wake.set()
            server.shutdown()
