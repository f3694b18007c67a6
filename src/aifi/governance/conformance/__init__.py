"""The vendor conformance kit: a product against reference studies through a real exchange.

    report = run_conformance(manifest, lambda env: handler, workdir=folder)
    attachment = report.write(Path("admission-report.html"))   # goes into the dossier

See :mod:`aifi.governance.conformance.kit` for how a run goes and
:mod:`aifi.governance.conformance.checks` for what is checked.
"""

from aifi.governance.conformance.checks import CHECKS, Evidence, Probe, run_checks
from aifi.governance.conformance.kit import (
    HandlerFactory,
    KitEnvironment,
    KitError,
    KitOptions,
    KitProgress,
    run_conformance,
)
from aifi.governance.conformance.reference_set import NoReferenceStudies, accepted_kinds
from aifi.governance.conformance.report import (
    CheckResult,
    ConformanceReport,
    JobEvidence,
    ResultEvidence,
)

__all__ = [
    "CHECKS",
    "CheckResult",
    "ConformanceReport",
    "Evidence",
    "HandlerFactory",
    "JobEvidence",
    "KitEnvironment",
    "KitError",
    "KitOptions",
    "KitProgress",
    "NoReferenceStudies",
    "Probe",
    "ResultEvidence",
    "accepted_kinds",
    "run_checks",
    "run_conformance",
]
