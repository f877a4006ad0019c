"""busi's answer for a DICOM scan as DICOM objects a hospital archive files under the same study (with
highdicom): a Comprehensive 3D SR following TID 1500 (the finding as a coded concept, the three
calibrated probabilities, each predicted lesion's measurements with their units and a reference to its
segment, the algorithm's identity, unverified, research use only) and a binary DICOM SEG of the predicted
lesions referencing the source image; on request, a Secondary Capture of the answered frame with the lesion
outlined and the answer written under it, for viewers that show neither. New series and UIDs; patient and study attributes come from the
source, nothing else."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from busi import __version__
from busi.evaluation.measurements import Lesion, components, hull, row_ends
from busi.evaluation.plots import OUTLINE_COLOUR, outline
from busi.io.dicom import frame_image

SCHEME = "99BUSI"  # busi's own codes, where DICOM and SNOMED CT have none
FINDINGS = {"benign": codes.SCT.Benign, "malignant": codes.SCT.Malignant, "normal": codes.SCT.Normal}
PROBABILITIES = {
    "benign": hd.sr.CodedConcept("P-BENIGN", SCHEME, "Probability of benign finding"),
    "malignant": codes.DCM.ProbabilityOfCancer,
    "normal": hd.sr.CodedConcept("P-NORMAL", SCHEME, "Probability of normal finding"),
}
PIXELS = hd.sr.CodedConcept("{pixels}", "UCUM", "pixels")  # lengths and areas of a scan without a spacing
DEPTH_TO_WIDTH = hd.sr.CodedConcept("DEPTH-WIDTH", SCHEME, "Depth to width ratio")
FINDING = codes.DCM.Finding
RESEARCH_USE = "busi AI result, unverified, research use only: not for diagnosis"
SEG_SERIES, SR_SERIES, CAPTURE_SERIES = 9901, 9902, 9903  # series numbers of what busi writes


@dataclass(frozen=True)
class Answer:
    """What busi answered for one frame of a DICOM scan."""

    class_names: tuple[str, ...]
    probabilities: list[float]
    label: str  # the decided class (the operating point's, where one was used)
    frame: int  # of the source, from 1
    mask: np.ndarray | None  # boolean (rows, columns) of the whole source frame; None without a decoder
    lesions: list[Lesion]  # of the mask, largest first
    model: dict  # busi.model.identity.identity: checkpoint SHA-256, recipe, image size


def derived_uid(*parts: object) -> str:
    """A UID fixed by what it names (the source instance, the frame, the model, the kind of object): the same
    answer written twice, after a restart or a second run, is the same object, which an archive keeps once."""
    return generate_uid(entropy_srcs=[str(part) for part in parts])


def is_busi_result(dataset: Dataset) -> bool:
    """An object busi wrote (an SR, a SEG or a capture of its series): never classified again."""
    series = (SEG_SERIES, SR_SERIES, CAPTURE_SERIES)
    return dataset.get("Manufacturer") == "busi" and dataset.get("SeriesNumber") in series


def new_object(source: Dataset, answer: Answer, kind: str, series: int) -> dict:
    """The identity of a result object of `kind` (SEG, SR, capture): its series in the source's study and
    its own instance, with UIDs fixed by what it answers (derived_uid), made by busi."""
    model = digest(answer.model)
    return {
        "series_instance_uid": derived_uid(source.StudyInstanceUID, model, f"{kind} series"),
        "series_number": series,
        "sop_instance_uid": derived_uid(source.SOPInstanceUID, answer.frame, model, kind),
        "instance_number": answer.frame,
        "manufacturer": "busi",
    }


def digest(model: dict) -> str:
    """The checkpoint's SHA-256 (a busi-cv folder's: its fold models', joined)."""
    return model["sha256"] if isinstance(model["sha256"], str) else ",".join(model["sha256"])


def algorithm(model: dict) -> tuple[str, list[str]]:
    return f"busi {__version__}", [f"checkpoint sha256 {digest(model)}", f"recipe {model.get('recipe')}"]


def segmentation(source: Dataset, answer: Answer) -> hd.seg.Segmentation:
    """The predicted lesions of the answered frame as one binary segment."""
    name, _ = algorithm(answer.model)
    frames = int(source.get("NumberOfFrames") or 1)
    pixels = np.zeros((frames, *answer.mask.shape), dtype=bool)
    pixels[answer.frame - 1] = answer.mask
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion predicted by busi",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="busi", family=codes.DCM.ArtificialIntelligence, version=__version__
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=pixels if frames > 1 else pixels[0],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        **new_object(source, answer, "SEG", SEG_SERIES),
        manufacturer_model_name=f"DenseNet121 {answer.model.get('recipe')}",
        software_versions=name,
        device_serial_number=identity_serial(answer.model),
        series_description=RESEARCH_USE[:64],
        omit_empty_frames=True,
    )
    # Type 2C without a frame of reference (ultrasound has none): the source's, or empty
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg


def identity_serial(model: dict) -> str:
    digest = model["sha256"] if isinstance(model["sha256"], str) else model["sha256"][0]
    return digest[:16]


def measurements_of(lesion: Lesion) -> list[hd.sr.Measurement]:
    mm, square_mm, pixels = codes.UCUM.Millimeter, codes.UCUM.SquareMillimeter, PIXELS
    known = lesion.long_axis_mm is not None
    values = [
        (codes.SCT.LongAxis, lesion.long_axis_mm if known else lesion.long_axis_px, mm if known else pixels),
        (codes.SCT.ShortAxis, lesion.short_axis_mm if known else lesion.short_axis_px, mm if known else pixels),
        (codes.SCT.Depth, lesion.depth_mm if known else lesion.depth_px, mm if known else pixels),
        (codes.SCT.Width, lesion.width_mm if known else lesion.width_px, mm if known else pixels),
        (codes.SCT.Area, lesion.area_mm2 if known else lesion.area_px, square_mm if known else pixels),
        (DEPTH_TO_WIDTH, lesion.depth_to_width, codes.UCUM.NoUnits),
    ]
    return [hd.sr.Measurement(name=n, value=float(v), unit=u) for n, v, u in values]  # the group names the algorithm


def lesion_outlines(mask: np.ndarray, count: int) -> list[np.ndarray]:
    """The convex outline (x, y in frame pixels) of the `count` largest regions of a mask, largest first:
    the lesions busi.evaluation.measurements.lesions measured, in its order."""
    labels = components(mask)
    areas = np.bincount(labels.ravel())[1:]
    order = np.argsort(-areas, kind="stable")[:count]
    return [hull(row_ends(labels == k + 1)) for k in order]


def segment_reference(source: Dataset, seg: hd.seg.Segmentation, frame: list[int] | None):
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        frame_number=1,  # the SEG holds the answered frame only (empty frames omitted)
        segment_number=1,
        source_image=hd.sr.SourceImageForSegmentation.from_source_image(source, referenced_frame_numbers=frame),
    )
    # the segment alone names it (the SEG has one frame): the standard allows a frame number or a segment
    # number in the reference, not both (dciodvfy)
    del reference[0].ReferencedSOPSequence[0].ReferencedFrameNumber
    return reference


def structured_report(source: Dataset, answer: Answer, seg: hd.seg.Segmentation | None) -> hd.sr.Comprehensive3DSR:
    """TID 1500: an image-level group with the finding and the probabilities, a planar group per lesion."""
    name, parameters = algorithm(answer.model)
    algorithm_id = hd.sr.AlgorithmIdentification(name="busi", version=__version__, parameters=parameters)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(digest(answer.model), "device"), name=name, manufacturer_name="busi", model_name=f"DenseNet121 {answer.model.get('recipe')}",
            serial_number=identity_serial(answer.model),
        ),
    )  # fmt: skip
    frame = [answer.frame] if int(source.get("NumberOfFrames") or 1) > 1 else None
    image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source, referenced_frame_numbers=frame)
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(source.SOPInstanceUID, answer.frame, "classification"), identifier="busi classification"
            ),
            algorithm_id=algorithm_id,
            source_images=[image],
            measurements=[
                hd.sr.Measurement(name=PROBABILITIES[n], value=float(p), unit=codes.UCUM.NoUnits)
                for n, p in zip(answer.class_names, answer.probabilities, strict=True)
                if n in PROBABILITIES
            ],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(FINDING, FINDINGS[answer.label])]
            if answer.label in FINDINGS
            else None,
        )
    ]
    outlines = lesion_outlines(answer.mask, len(answer.lesions)) if answer.mask is not None else []
    for number, (lesion, border) in enumerate(zip(answer.lesions, outlines, strict=False), start=1):
        orientation = codes.DCM.NotParallel if lesion.orientation == "not parallel" else codes.DCM.Parallel
        where = {}
        if seg is None:  # no SEG (a cine loop without a frame of reference): the lesion's outline on the frame
            where["referenced_region"] = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.vstack([border, border[:1]]),
                source_image=hd.sr.SourceImageForRegion.from_source_image(source, referenced_frame_numbers=frame),
            )
        else:
            where["referenced_segment"] = segment_reference(source, seg, frame)
        groups.append(
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid(source.SOPInstanceUID, answer.frame, "lesion", number),
                    identifier=f"lesion {number}",
                ),
                **where,
                finding_type=codes.SCT.Lesion,
                algorithm_id=algorithm_id,
                measurements=measurements_of(lesion),
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.DCM.Orientation, orientation)],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.UltrasonographyOfBreast,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, *([seg] if seg is not None else [])],
        content=report,
        **new_object(source, answer, "SR", SR_SERIES),
        is_complete=True,
        is_final=False,
        is_verified=False,
    )
    sr.SeriesDescription = RESEARCH_USE[:64]
    return sr


def caption(answer: Answer) -> list[str]:
    """The answer in words, as the capture shows it under the frame."""
    decided = answer.probabilities[answer.class_names.index(answer.label)]
    shares = " · ".join(f"{n} {p:.1%}" for n, p in zip(answer.class_names, answer.probabilities, strict=True))
    lines = [f"busi {__version__}: {answer.label} ({decided:.1%})", shares]
    lines += [f"lesion {number}: {lesion.summary()}" for number, lesion in enumerate(answer.lesions, start=1)]
    # Pillow's built-in font has neither × nor ²
    return [line.replace("×", "x").replace("²", "2") for line in [*lines, RESEARCH_USE]]


def wrapped(lines: list[str], font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """The lines broken between words so that each fits in `width` pixels (a word longer stays whole)."""
    out = []
    for line in lines:
        current = ""
        for word in line.split(" "):
            longer = f"{current} {word}" if current else word
            if current and font.getlength(longer) > width:
                out.append(current)
                longer = word
            current = longer
        out.append(current)
    return out


def capture_pixels(source: Dataset, answer: Answer) -> np.ndarray:
    """The answered frame in RGB with the predicted lesions outlined, the caption in a black band under it."""
    frame = np.array(frame_image(source, answer.frame).convert("RGB"))
    if answer.mask is not None:
        frame[outline(answer.mask, width=max(1, min(frame.shape[:2]) // 200))] = OUTLINE_COLOUR
    size = max(8, min(24, frame.shape[1] // 40))
    font = ImageFont.load_default(size=size)
    lines = wrapped(caption(answer), font, frame.shape[1] - 12)
    band = Image.new("RGB", (frame.shape[1], len(lines) * (size + 4) + 8), "black")
    ImageDraw.Draw(band).multiline_text((6, 4), "\n".join(lines), fill="white", font=font, spacing=4)
    return np.vstack([frame, np.asarray(band)])


def secondary_capture(source: Dataset, answer: Answer) -> hd.sc.SCImage:
    """The overlay as a Secondary Capture in the source's study (the answer burnt into its pixels)."""
    name, _ = algorithm(answer.model)
    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=capture_pixels(source, answer),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=("A", "F"),  # highdicom insists on one; replaced below by what the source says
        **new_object(source, answer, "capture", CAPTURE_SERIES),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    capture.PatientOrientation = source.get("PatientOrientation", "")  # Type 2: an ultrasound frame has none
    capture.Laterality = source.get("Laterality", "")  # Type 2C for a paired body part: the breast
    capture.BurnedInAnnotation = "YES"
    capture.SoftwareVersions = name
    capture.SeriesDescription = RESEARCH_USE[:64]
    return capture


def can_segment(source: Dataset) -> bool:
    """highdicom writes a SEG of a multi-frame source only within a frame of reference (ultrasound cine
    loops rarely have one): their lesions are outlined in the SR instead."""
    return int(source.get("NumberOfFrames") or 1) == 1 or "FrameOfReferenceUID" in source


TYPE_2 = (  # patient and study attributes the results copy: present in every DICOM object, possibly empty
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip


def write_results(source: Dataset, answer: Answer, folder: Path, stem: str, capture: bool = False) -> list[Path]:
    """STEM_seg.dcm (with a decoder, a predicted lesion and a source it can refer to), STEM_sr.dcm and, with
    `capture`, STEM_capture.dcm in `folder`."""
    source = copy.deepcopy(source)
    for keyword in TYPE_2:  # a scanner may leave out what may be empty: empty, as the standard has it
        if keyword not in source:
            setattr(source, keyword, "")
    lesion = answer.mask is not None and answer.mask.any()
    seg = segmentation(source, answer) if lesion and can_segment(source) else None
    written = []
    if seg is not None:
        seg.save_as(folder / f"{stem}_seg.dcm")
        written.append(folder / f"{stem}_seg.dcm")
    structured_report(source, answer, seg).save_as(folder / f"{stem}_sr.dcm")
    written.append(folder / f"{stem}_sr.dcm")
    if capture:
        secondary_capture(source, answer).save_as(folder / f"{stem}_capture.dcm")
        written.append(folder / f"{stem}_capture.dcm")
    return written
