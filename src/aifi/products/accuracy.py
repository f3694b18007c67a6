"""How close each reference product comes to the phantoms' truth: the figures the demo prints.

Every product is run as a worker runs it (its ``run`` on a folder of DICOM files, writing SR,
SEG and summary) on synthetic studies whose truth is known, and its answer is read back the
way a consumer would read it: volumes and triage from the JSON summary, nodule centres from
the SEG. The figures are compared with the targets the products are held to:

- brain volumetry: intracranial and parenchyma volumes within 5 % of truth;
- lung nodules: sensitivity at least 90 % for nodules of 6 mm and larger, at most 2 false
  positives per scan, centres within 2 mm;
- intracranial haemorrhage: every study classified right, volume within 10 %.

Phantoms have sharp, noise-light boundaries and no partial volume, so these figures say that
an algorithm does what it claims on ideal data; they say nothing about patients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np

from aifi.phantoms import GridSize, StudyTruth, write_study
from aifi.products import brain_volumetry, ich_triage, lung_nodules
from aifi.vendor import Handler, JobContext, ProductResult

Size = GridSize | str

#: Haemorrhage volumes (mL) and nodule diameters (mm) the phantoms cycle through.
HAEMORRHAGE_ML = (8.0, 1.0, 45.0, 3.0, 20.0)
NODULE_DIAMETERS_MM = (4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 25.0)
#: A detection matches a nodule when its centre lies within the nodule's radius (at least this).
MATCH_RADIUS_MM = 3.0


def measure_accuracy(
    product_id: str, studies: int, workdir: Path, *, size: Size = "default"
) -> dict[str, Any]:
    """Run `product_id` on `studies` phantoms written under `workdir`; its accuracy figures.

    Parameters
    ----------
    size:
        Phantom grid: a preset name or a :class:`GridSize` (MR brain needs slices of at most
        3 mm, as the product requires).

    Returns
    -------
    dict
        ``product_id``, ``studies``, ``figures`` (name → number), ``targets`` (name →
        ``{"measured", "target", "met"}``) and ``cases`` (one row per study).

    Raises
    ------
    ValueError
        For an unknown product id or fewer than one study.
    """
    if product_id not in _EVALUATIONS:
        raise ValueError(f"no accuracy evaluation for product {product_id!r}")
    if studies < 1:
        raise ValueError(f"studies must be at least 1, got {studies}")
    evaluation = _EVALUATIONS[product_id]
    cases = [
        evaluation.case(evaluation.handler, seed, workdir / product_id / f"seed-{seed}", size)
        for seed in range(studies)
    ]
    figures, targets = evaluation.summarise(cases)
    return {
        "product_id": product_id,
        "studies": studies,
        "figures": figures,
        "targets": targets,
        "cases": cases,
    }


def _run(handler: Handler, folder: Path) -> tuple[ProductResult, Path]:
    output = folder / "outputs"
    output.mkdir(parents=True, exist_ok=True)
    inputs = sorted((folder / "inputs").glob("*.dcm"))
    result = handler(JobContext(job={"id": folder.name}, inputs=inputs, output_dir=output))
    return result, output


def _measurements(summary: dict[str, Any], tracking_id: str) -> dict[str, float]:
    for finding in summary["findings"]:
        if finding["tracking_id"] == tracking_id:
            return {name: float(m["value"]) for name, m in finding["measurements"].items()}
    raise ValueError(f"the summary has no finding {tracking_id!r}")


def _error_pct(measured: float, truth: float) -> float:
    return abs(measured - truth) / truth * 100.0 if truth else float("inf")


def _at_most(measured: float, target: float) -> dict[str, Any]:
    return {"measured": round(measured, 4), "target": target, "met": bool(measured <= target)}


def _at_least(measured: float, target: float) -> dict[str, Any]:
    return {"measured": round(measured, 4), "target": target, "met": bool(measured >= target)}


# -- brain volumetry ---------------------------------------------------------------------------


def _brain_case(handler: Handler, seed: int, folder: Path, size: Size) -> dict[str, Any]:
    kind = "ct-head" if seed % 2 == 0 else "mr-brain"
    truth = write_study(kind, folder / "inputs", seed=seed, size=size)
    result, output = _run(handler, folder)
    return {"seed": seed, **_brain_compare(truth, result.summary, output)}


def _brain_compare(truth: StudyTruth, summary: dict[str, Any], _outputs: Path) -> dict[str, Any]:
    assert truth.brain is not None
    icv = _measurements(summary, "Intracranial volume")["Volume"]
    parenchyma = _measurements(summary, "Brain parenchyma")
    return {
        "kind": str(truth.kind),
        "icv_ml": icv,
        "icv_truth_ml": truth.brain.intracranial_volume_ml,
        "parenchyma_ml": parenchyma["Volume"],
        "parenchyma_truth_ml": truth.brain.brain_parenchyma_ml,
        "bpf": parenchyma["Volume Ratio"],
        "bpf_truth": truth.brain.brain_parenchymal_fraction,
    }


def _brain_summary(cases: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    icv = max(_error_pct(c["icv_ml"], c["icv_truth_ml"]) for c in cases)
    parenchyma = max(_error_pct(c["parenchyma_ml"], c["parenchyma_truth_ml"]) for c in cases)
    bpf = max(abs(c["bpf"] - c["bpf_truth"]) for c in cases)
    figures = {
        "max_icv_error_pct": round(icv, 3),
        "max_parenchyma_error_pct": round(parenchyma, 3),
        "max_bpf_error": round(bpf, 4),
    }
    targets = {
        "icv_error_pct": _at_most(icv, 5.0),
        "parenchyma_error_pct": _at_most(parenchyma, 5.0),
    }
    return figures, targets


# -- lung nodules ------------------------------------------------------------------------------


def _nodule_diameters(seed: int) -> list[float]:
    """Every fourth study has no nodule; the others one to five of mixed sizes."""
    if seed % 4 == 3:
        return []
    rng = np.random.default_rng([seed, 17])
    count = int(rng.integers(1, 6))
    return [float(d) for d in rng.choice(NODULE_DIAMETERS_MM, size=count, replace=False)]


def _segment_centres(seg_path: Path) -> dict[int, np.ndarray]:
    """Centroid (patient mm) of every segment of the SEG at `seg_path`, by segment number."""
    seg = hd.seg.segread(seg_path)
    numbers = list(seg.get_segment_numbers())
    volume = seg.get_volume(segment_numbers=numbers, combine_segments=False)
    centres = {}
    for channel, number in enumerate(numbers):
        indices = np.argwhere(volume.array[..., channel] > 0)
        centres[number] = volume.map_indices_to_reference(indices).mean(axis=0)
    return centres


def _lung_case(handler: Handler, seed: int, folder: Path, size: Size) -> dict[str, Any]:
    truth = write_study(
        "ct-chest", folder / "inputs", seed=seed, size=size, nodules=_nodule_diameters(seed)
    )
    result, output = _run(handler, folder)
    return {"seed": seed, **_lung_compare(truth, result.summary, output)}


def _lung_compare(truth: StudyTruth, summary: dict[str, Any], outputs: Path) -> dict[str, Any]:
    detections = [f for f in summary["findings"] if f["measurements"]]
    centres = _segment_centres(outputs / "lung-nodules-seg.dcm") if detections else {}
    found = [
        (centres[number], float(f["measurements"]["Diameter"]["value"]))
        for number, f in enumerate(detections, start=1)
    ]
    return _match_nodules(truth, found)


def _match_nodules(truth: StudyTruth, found: list[tuple[np.ndarray, float]]) -> dict[str, Any]:
    """Pair each true nodule (largest first) with the nearest unpaired detection inside it."""
    unpaired = list(range(len(found)))
    nodules = []
    for nodule in sorted(truth.nodules, key=lambda n: -n.requested_diameter_mm):
        centre = np.asarray(nodule.centre_mm)
        reach = max(nodule.diameter_mm / 2.0, MATCH_RADIUS_MM)
        distances = {i: float(np.linalg.norm(found[i][0] - centre)) for i in unpaired}
        best = min(distances, key=lambda i: distances[i], default=None)
        hit = best is not None and distances[best] <= reach
        if hit:
            assert best is not None
            unpaired.remove(best)
        nodules.append(
            {
                "diameter_mm": nodule.requested_diameter_mm,
                "truth_diameter_mm": nodule.diameter_mm,
                "detected": hit,
                "centre_error_mm": round(distances[best], 3) if hit and best is not None else None,
                "measured_diameter_mm": found[best][1] if hit and best is not None else None,
            }
        )
    return {"nodules": nodules, "false_positives": len(unpaired)}


def _lung_summary(cases: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    nodules = [n for c in cases for n in c["nodules"]]
    large = [n for n in nodules if n["diameter_mm"] >= 6.0]
    sensitivity_large = sum(n["detected"] for n in large) / len(large) if large else 1.0
    sensitivity_all = sum(n["detected"] for n in nodules) / len(nodules) if nodules else 1.0
    fp_per_scan = sum(c["false_positives"] for c in cases) / len(cases)
    errors = [n["centre_error_mm"] for n in large if n["detected"]]
    centre = max(errors) if errors else 0.0
    diameter_errors = [
        abs(n["measured_diameter_mm"] - n["truth_diameter_mm"]) for n in nodules if n["detected"]
    ]
    figures = {
        "nodules": len(nodules),
        "nodules_6mm_or_larger": len(large),
        "sensitivity_6mm_or_larger": round(sensitivity_large, 4),
        "sensitivity_all": round(sensitivity_all, 4),
        "false_positives_per_scan": round(fp_per_scan, 3),
        "max_centre_error_mm": round(centre, 3),
        "max_diameter_error_mm": round(max(diameter_errors, default=0.0), 3),
    }
    targets = {
        "sensitivity_6mm_or_larger": _at_least(sensitivity_large, 0.9),
        "false_positives_per_scan": _at_most(fp_per_scan, 2.0),
        "centre_error_mm": _at_most(centre, 2.0),
    }
    return figures, targets


# -- intracranial haemorrhage ------------------------------------------------------------------


def _ich_case(handler: Handler, seed: int, folder: Path, size: Size) -> dict[str, Any]:
    volume = None if seed % 2 == 1 else HAEMORRHAGE_ML[(seed // 2) % len(HAEMORRHAGE_ML)]
    truth = write_study("ct-head", folder / "inputs", seed=seed, size=size, haemorrhage_ml=volume)
    result, output = _run(handler, folder)
    return {"seed": seed, **_ich_compare(truth, result.summary, output)}


def _ich_compare(truth: StudyTruth, summary: dict[str, Any], _outputs: Path) -> dict[str, Any]:
    triage = summary["triage"]
    measured = _measurements(summary, ich_triage.TRACKING_ID).get("Volume", 0.0)
    return {
        "positive": truth.haemorrhage is not None,
        "flag": triage["flag"],
        "priority": triage["priority"],
        "volume_ml": measured,
        "volume_truth_ml": truth.haemorrhage.volume_ml if truth.haemorrhage else 0.0,
    }


def _ich_summary(cases: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, Any]]:
    right = [(c["flag"] == "positive") == c["positive"] for c in cases]
    positives = [c for c in cases if c["positive"]]
    errors = [_error_pct(c["volume_ml"], c["volume_truth_ml"]) for c in positives]
    error = max(errors, default=0.0)
    high = all(c["priority"] == "high" for c in positives)
    figures = {
        "studies_positive": len(positives),
        "classified_right": round(sum(right) / len(cases), 4),
        "max_volume_error_pct": round(error, 3),
        "positives_at_high_priority": float(high),
    }
    targets = {
        "classified_right": _at_least(sum(right) / len(cases), 1.0),
        "volume_error_pct": _at_most(error, 10.0),
    }
    return figures, targets


Evaluate = Callable[[Handler, int, Path, Size], dict[str, Any]]
Compare = Callable[[StudyTruth, dict[str, Any], Path], dict[str, Any]]
Summarise = Callable[[list[dict[str, Any]]], tuple[dict[str, float], dict[str, Any]]]


@dataclass(frozen=True)
class _Evaluation:
    handler: Handler
    case: Evaluate
    compare: Compare
    summarise: Summarise


_EVALUATIONS: dict[str, _Evaluation] = {
    brain_volumetry.PRODUCT_ID: _Evaluation(
        brain_volumetry.run, _brain_case, _brain_compare, _brain_summary
    ),
    lung_nodules.PRODUCT_ID: _Evaluation(
        lung_nodules.run, _lung_case, _lung_compare, _lung_summary
    ),
    ich_triage.PRODUCT_ID: _Evaluation(ich_triage.run, _ich_case, _ich_compare, _ich_summary),
}

#: The products :func:`measure_accuracy` can evaluate, in the order the demo shows them.
EVALUATED_PRODUCTS = tuple(_EVALUATIONS)


def compare_with_truth(
    product_id: str, truth: StudyTruth, summary: dict[str, Any], outputs: Path
) -> dict[str, Any]:
    """One case: what `product_id` reported for a study (its JSON summary, and its result files
    in `outputs`) against that study's truth — for results that came through the platform."""
    return _EVALUATIONS[product_id].compare(truth, summary, outputs)


def summarise_cases(
    product_id: str, cases: list[dict[str, Any]]
) -> tuple[dict[str, float], dict[str, Any]]:
    """The accuracy figures and targets over cases made by :func:`compare_with_truth`."""
    return _EVALUATIONS[product_id].summarise(cases)
