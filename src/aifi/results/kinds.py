"""The kinds of result object the exchange accepts, keyed by SOP Class UID.

IHE AIR result objects (SR TID 1500, SEG, Parametric Map, KOS) sit beside the kinds vendors
really send today (secondary capture overlays, presentation states, PDF and plain-text
reports), which are accepted but flagged as not AIR-conformant.
"""

from __future__ import annotations

from enum import StrEnum

from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)


class ResultKind(StrEnum):
    """What a result object is, as the exchange and its dashboards name it."""

    SR_TID1500 = "sr-tid1500"
    COMPREHENSIVE_3D_SR = "comprehensive-3d-sr"
    COMPREHENSIVE_SR = "comprehensive-sr"
    ENHANCED_SR = "enhanced-sr"
    BASIC_TEXT_SR = "basic-text-sr"
    SEG = "seg"
    PARAMETRIC_MAP = "parametric-map"
    KOS = "kos"
    GSPS = "gsps"
    SECONDARY_CAPTURE = "secondary-capture"
    ENCAPSULATED_PDF = "encapsulated-pdf"


#: Accepted SOP classes and the kind each one is (a structured SR with a TID 1500 root becomes
#: :attr:`ResultKind.SR_TID1500` once its content is looked at).
ACCEPTED_SOP_CLASSES: dict[str, ResultKind] = {
    Comprehensive3DSRStorage: ResultKind.COMPREHENSIVE_3D_SR,
    ComprehensiveSRStorage: ResultKind.COMPREHENSIVE_SR,
    EnhancedSRStorage: ResultKind.ENHANCED_SR,
    BasicTextSRStorage: ResultKind.BASIC_TEXT_SR,
    SegmentationStorage: ResultKind.SEG,
    ParametricMapStorage: ResultKind.PARAMETRIC_MAP,
    KeyObjectSelectionDocumentStorage: ResultKind.KOS,
    GrayscaleSoftcopyPresentationStateStorage: ResultKind.GSPS,
    SecondaryCaptureImageStorage: ResultKind.SECONDARY_CAPTURE,
    MultiFrameSingleBitSecondaryCaptureImageStorage: ResultKind.SECONDARY_CAPTURE,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage: ResultKind.SECONDARY_CAPTURE,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage: ResultKind.SECONDARY_CAPTURE,
    MultiFrameTrueColorSecondaryCaptureImageStorage: ResultKind.SECONDARY_CAPTURE,
    EncapsulatedPDFStorage: ResultKind.ENCAPSULATED_PDF,
}

#: SR kinds whose content tree can hold TID 1500 and TID 4019 (Basic Text SR cannot: no NUM).
STRUCTURED_SR_KINDS = frozenset(
    {
        ResultKind.SR_TID1500,
        ResultKind.COMPREHENSIVE_3D_SR,
        ResultKind.COMPREHENSIVE_SR,
        ResultKind.ENHANCED_SR,
    }
)

#: What each kind must carry to be worth anything (any one of the keywords): a file cut at an
#: element boundary is still well-formed DICOM, and is caught only by its missing content.
CONTENT_KEYWORDS: dict[ResultKind, tuple[str, ...]] = {
    ResultKind.SR_TID1500: ("ContentSequence",),
    ResultKind.COMPREHENSIVE_3D_SR: ("ContentSequence",),
    ResultKind.COMPREHENSIVE_SR: ("ContentSequence",),
    ResultKind.ENHANCED_SR: ("ContentSequence",),
    ResultKind.BASIC_TEXT_SR: ("ContentSequence",),
    ResultKind.KOS: ("ContentSequence",),
    ResultKind.SEG: ("PixelData",),
    ResultKind.PARAMETRIC_MAP: ("PixelData", "FloatPixelData", "DoubleFloatPixelData"),
    ResultKind.SECONDARY_CAPTURE: ("PixelData",),
    ResultKind.ENCAPSULATED_PDF: ("EncapsulatedDocument",),
    ResultKind.GSPS: ("ReferencedSeriesSequence",),
}
