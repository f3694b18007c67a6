"""Which instances probably carry identity burned into their pixels, and why.

Table E.1-1 only covers attributes; text drawn into the image (name, birth date, hospital on an
ultrasound frame or a screenshot) survives any header profile. The engine refuses such
instances unless the hospital configured regions to blank (Clean Pixel Data).

The SOP classes below are those where burned-in identity is the rule rather than the exception,
from the classes' definitions in PS3.3 and from what modalities do in practice:

- Secondary Capture (single and multi-frame): screenshots, scanned paper, dose screens and
  vendor "patient protocol" pages; the capture of a display includes its text overlay.
- Ultrasound (single and multi-frame, including the retired classes): the scanner writes the
  patient's name, ID, date and institution into the image header bar.
- Visible-light photography, endoscopy, video and slide microscopy, ophthalmic photography:
  photographs show faces, wristbands, and slide labels with names and barcodes; endoscopy
  towers print the patient's name on the frame.
- Whole slide microscopy: the LABEL and OVERVIEW images show the slide label.
- Encapsulated PDF, CDA, STL/OBJ/MTL documents: the document itself is free content the engine
  cannot inspect; no pixel region can clean it, so they are always refused.

Any instance, whatever its class, with Burned In Annotation (0028,0301) = YES, or with an Image
Type value that vendors use for screen captures and dose reports, is refused as well.
"""

from __future__ import annotations

from types import MappingProxyType

from pydicom.dataset import Dataset

from aifi.dicom.deid.elements import peek_text

_SOP_CLASS_UID = 0x00080016
_IMAGE_TYPE = 0x00080008
_BURNED_IN_ANNOTATION = 0x00280301

_SCREEN = "usually a screenshot or scanned page showing the patient's identity"
_US = "ultrasound scanners write the patient's name, ID and date into the image"
_PHOTO = "photographs and video frames may show faces, wristbands or labels"
_SLIDE = "slide images show the slide label with the patient's name or barcode"

#: SOP Class UID -> why its pixels probably hold identity (refused unless cleaned).
BURNED_IN_SOP_CLASSES: MappingProxyType[str, str] = MappingProxyType(
    {
        "1.2.840.10008.5.1.4.1.1.7": f"Secondary Capture Image: {_SCREEN}",
        "1.2.840.10008.5.1.4.1.1.7.1": f"Multi-frame Single Bit Secondary Capture: {_SCREEN}",
        "1.2.840.10008.5.1.4.1.1.7.2": f"Multi-frame Grayscale Byte Secondary Capture: {_SCREEN}",
        "1.2.840.10008.5.1.4.1.1.7.3": f"Multi-frame Grayscale Word Secondary Capture: {_SCREEN}",
        "1.2.840.10008.5.1.4.1.1.7.4": f"Multi-frame True Color Secondary Capture: {_SCREEN}",
        "1.2.840.10008.5.1.4.1.1.6": f"Ultrasound Image (retired): {_US}",
        "1.2.840.10008.5.1.4.1.1.6.1": f"Ultrasound Image: {_US}",
        "1.2.840.10008.5.1.4.1.1.3": f"Ultrasound Multi-frame Image (retired): {_US}",
        "1.2.840.10008.5.1.4.1.1.3.1": f"Ultrasound Multi-frame Image: {_US}",
        "1.2.840.10008.5.1.4.1.1.6.2": f"Enhanced US Volume: {_US}",
        "1.2.840.10008.5.1.4.1.1.77.1.1": f"VL Endoscopic Image: {_PHOTO}",
        "1.2.840.10008.5.1.4.1.1.77.1.1.1": f"Video Endoscopic Image: {_PHOTO}",
        "1.2.840.10008.5.1.4.1.1.77.1.2": f"VL Microscopic Image: {_SLIDE}",
        "1.2.840.10008.5.1.4.1.1.77.1.2.1": f"Video Microscopic Image: {_SLIDE}",
        "1.2.840.10008.5.1.4.1.1.77.1.3": f"VL Slide-Coordinates Microscopic Image: {_SLIDE}",
        "1.2.840.10008.5.1.4.1.1.77.1.4": f"VL Photographic Image: {_PHOTO}",
        "1.2.840.10008.5.1.4.1.1.77.1.4.1": f"Video Photographic Image: {_PHOTO}",
        "1.2.840.10008.5.1.4.1.1.77.1.5.1": f"Ophthalmic Photography 8 Bit Image: {_PHOTO}",
        "1.2.840.10008.5.1.4.1.1.77.1.5.2": f"Ophthalmic Photography 16 Bit Image: {_PHOTO}",
        "1.2.840.10008.5.1.4.1.1.77.1.5.5": f"Wide Field Ophthalmic Photography: {_PHOTO}",
    }
)

#: Encapsulated documents: refused always, no region can clean them.
DOCUMENT_SOP_CLASSES: MappingProxyType[str, str] = MappingProxyType(
    {
        "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
        "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
        "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL",
        "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ",
        "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL",
    }
)

WHOLE_SLIDE_MICROSCOPY = "1.2.840.10008.5.1.4.1.1.77.1.6"

#: Image Type values vendors use for screen captures and dose/protocol pages.
SCREEN_CAPTURE_IMAGE_TYPES = frozenset({"SCREEN SAVE", "DOSE REPORT", "DOSE_INFO", "CSA REPORT"})


def document_reason(ds: Dataset) -> str | None:
    """Why the instance can never be sent (an encapsulated document), or None."""
    name = DOCUMENT_SOP_CLASSES.get("".join(peek_text(ds, _SOP_CLASS_UID)))
    if name is None:
        return None
    return (
        f"{name} (SOP Class UID rule): the encapsulated document may hold identity the engine "
        "cannot inspect or clean"
    )


def burned_in_reason(ds: Dataset) -> str | None:
    """Why the instance's pixels probably hold identity (a reason a person can act on), or None."""
    burned_in = "".join(peek_text(ds, _BURNED_IN_ANNOTATION)).upper()
    if burned_in == "YES":
        return "Burned In Annotation (0028,0301) is YES: the image shows identifying text"
    sop_class = "".join(peek_text(ds, _SOP_CLASS_UID))
    reason = BURNED_IN_SOP_CLASSES.get(sop_class)
    if reason is not None:
        return f"{reason} (SOP Class UID rule)"
    image_type = {v.upper() for v in peek_text(ds, _IMAGE_TYPE)}
    if sop_class == WHOLE_SLIDE_MICROSCOPY and image_type & {"LABEL", "OVERVIEW"}:
        return f"Whole slide {sorted(image_type & {'LABEL', 'OVERVIEW'})[0]} image: {_SLIDE}"
    marked = image_type & SCREEN_CAPTURE_IMAGE_TYPES
    if marked:
        return (
            f"Image Type (0008,0008) contains {sorted(marked)[0]!r}: a screen capture or dose "
            "page that usually shows the patient's identity"
        )
    return None
