"""The business-case pillar: a transparent cost-benefit engine for AI in radiology.

Inputs come from YAML (every number with its unit and source), scenarios are compared side by side,
Monte Carlo and a tornado show what the uncertainty does, and the exchange's metering can replace
assumed volumes. The `aifi business-case` command (`aifi.business.cli`) prints and writes reports.
"""

from aifi.business.analysis import Analysis, analyse, analysis_to_dict
from aifi.business.engine import ScenarioOutcome, evaluate
from aifi.business.loading import BusinessCaseError, load_case, parse_case, shipped_examples
from aifi.business.metering import MeteringError, MeteringRow, apply_metering, fetch_metering
from aifi.business.model import BusinessCase

__all__ = [
    "Analysis",
    "BusinessCase",
    "BusinessCaseError",
    "MeteringError",
    "MeteringRow",
    "ScenarioOutcome",
    "analyse",
    "analysis_to_dict",
    "apply_metering",
    "evaluate",
    "fetch_metering",
    "load_case",
    "parse_case",
    "shipped_examples",
]
