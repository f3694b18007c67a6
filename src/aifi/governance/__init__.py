"""Clinical governance: admission of AI products, the vendor conformance kit, evaluation.

Pure logic on plain data, so the exchange (tables, routes) and the web pages (templates) can
wire it in without this package knowing about either:

- :mod:`~aifi.governance.admission` — admission states and who may move a product between them;
- :mod:`~aifi.governance.dossier` — the admission dossier and its completeness check;
- :mod:`~aifi.governance.processing` — a product's record of processing for a hospital's DPIA;
- :mod:`~aifi.governance.evaluation` and :mod:`~aifi.governance.drift` — performance in
  practice per product × hospital and nationally, and drift of the positive rate;
- :mod:`~aifi.governance.priorities` — the national priority list of clinical areas;
- :mod:`~aifi.governance.conformance` — the conformance kit (imported on its own: it starts an
  exchange and a worker); ``aifi conformance`` is :mod:`~aifi.governance.cli`.
"""

from aifi.governance.admission import (
    AdmissionAction,
    AdmissionError,
    AdmissionState,
    allowed_actions,
    may_subscribe,
    on_new_version,
    takes_jobs,
    transition,
)
from aifi.governance.dossier import (
    ConformanceAttachment,
    Dossier,
    DossierIncomplete,
    Gap,
    dossier_gaps,
    require_complete,
)
from aifi.governance.drift import DriftAlert, DriftChart, PChart, drift_charts, p_chart
from aifi.governance.evaluation import (
    NATIONAL,
    UNRECORDED,
    Agreement,
    EligibleCount,
    Feedback,
    JobRecord,
    ProductEvaluation,
    Proportion,
    evaluate,
)
from aifi.governance.priorities import AreaScore, PriorityList, RankedArea, rank_areas
from aifi.governance.processing import (
    ExchangeProcessing,
    GatewayProcessing,
    RecordOfProcessing,
    RoutingRule,
    record_of_processing,
)

__all__ = [
    "NATIONAL",
    "UNRECORDED",
    "AdmissionAction",
    "AdmissionError",
    "AdmissionState",
    "Agreement",
    "AreaScore",
    "ConformanceAttachment",
    "Dossier",
    "DossierIncomplete",
    "DriftAlert",
    "DriftChart",
    "EligibleCount",
    "ExchangeProcessing",
    "Feedback",
    "Gap",
    "GatewayProcessing",
    "JobRecord",
    "PChart",
    "PriorityList",
    "ProductEvaluation",
    "Proportion",
    "RankedArea",
    "RecordOfProcessing",
    "RoutingRule",
    "allowed_actions",
    "dossier_gaps",
    "drift_charts",
    "evaluate",
    "may_subscribe",
    "on_new_version",
    "p_chart",
    "rank_areas",
    "record_of_processing",
    "require_complete",
    "takes_jobs",
    "transition",
]
