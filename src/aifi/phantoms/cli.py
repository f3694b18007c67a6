"""`aifi phantom KIND OUTPUT`: write one synthetic study and its ground truth from the shell.

`app` runs :func:`phantom` on its own; to put it under the main command as ``aifi phantom``,
register the function (``main_app.command("phantom")(phantom)``): Typer's ``add_typer`` would
turn it into a group and expect a sub-command name before KIND.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aifi.phantoms.chest import Nodule
from aifi.phantoms.study import write_study
from aifi.phantoms.truth import PhantomKind, StudyTruth

app = typer.Typer(help="Synthetic studies with known ground truth.", add_completion=False)


def _triple(text: str, option: str) -> tuple[float, float, float]:
    try:
        x, y, z = (float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(
            f"{option} expects three numbers x,y,z in mm, got {text!r}"
        ) from None
    return (x, y, z)


def parse_nodule(text: str) -> Nodule:
    """``DIAMETER`` (placed by the seed) or ``DIAMETER@x,y,z`` (centre in patient mm)."""
    diameter, _, centre = text.partition("@")
    try:
        size = float(diameter)
    except ValueError:
        raise typer.BadParameter(
            f"--nodule expects DIAMETER or DIAMETER@x,y,z, got {text!r}"
        ) from None
    return Nodule(size, _triple(centre, "--nodule") if centre else None)


@app.command()
def phantom(
    kind: Annotated[PhantomKind, typer.Argument(help="Which study to make.")],
    output: Annotated[Path, typer.Argument(help="Folder for the DICOM files (created).")],
    seed: Annotated[
        int, typer.Option(min=0, help="Decides patient, anatomy, placement, noise.")
    ] = 0,
    truth: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the truth JSON (default: OUTPUT.truth.json beside the folder)."
        ),
    ] = None,
    size: Annotated[str, typer.Option(help="small, default or bench.")] = "default",
    haemorrhage_ml: Annotated[
        float | None, typer.Option(help="ct-head/mr-brain: haemorrhage volume.")
    ] = None,
    haemorrhage_centre: Annotated[
        str | None,
        typer.Option(help="Haemorrhage centre x,y,z in patient mm (default: chosen by the seed)."),
    ] = None,
    nodule: Annotated[
        list[str] | None,
        typer.Option(help="ct-chest: DIAMETER or DIAMETER@x,y,z in mm; repeatable."),
    ] = None,
    fracture: Annotated[bool, typer.Option(help="dx-hand: break the distal radius.")] = False,
    patient_id: Annotated[
        str | None, typer.Option(help="Patient ID (default: chosen by the seed).")
    ] = None,
    patient_name: Annotated[
        str | None, typer.Option(help="Family^Given (default: chosen by the seed).")
    ] = None,
    institution: Annotated[
        str | None, typer.Option(help="Institution Name (default: chosen by the seed).")
    ] = None,
) -> None:
    """Write one synthetic study (DICOM files in OUTPUT) and its ground truth (JSON)."""
    overrides = {
        key: value
        for key, value in (
            ("patient_id", patient_id),
            ("patient_name", patient_name),
            ("institution_name", institution),
        )
        if value is not None
    }
    try:
        result = write_study(
            kind,
            output,
            seed=seed,
            identity=overrides,
            size=size,
            haemorrhage_ml=haemorrhage_ml,
            haemorrhage_centre_mm=_triple(haemorrhage_centre, "--haemorrhage-centre")
            if haemorrhage_centre
            else None,
            nodules=[parse_nodule(n) for n in nodule or []],
            fracture=fracture,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    truth_path = truth or output.with_name(output.name + ".truth.json")
    result.write_json(truth_path)
    Console().print(summary_table(result, output, truth_path))


def summary_table(truth: StudyTruth, output: Path, truth_path: Path) -> Table:
    """A short overview of what was written and the findings in it."""
    table = Table(
        title=f"Synthetic {truth.kind.value} study (seed {truth.seed})", show_header=False
    )
    table.add_row("instances", f"{truth.instance_count} in {output}")
    table.add_row("grid", f"{truth.grid.rows}x{truth.grid.columns}x{truth.grid.slices}")
    table.add_row("study UID", truth.study_instance_uid)
    table.add_row("truth", str(truth_path))
    if truth.brain is not None:
        brain = truth.brain
        table.add_row(
            "brain",
            f"ICV {brain.intracranial_volume_ml:.0f} mL, "
            f"BPF {brain.brain_parenchymal_fraction:.3f}",
        )
    if truth.haemorrhage is not None:
        centre = ", ".join(f"{c:.1f}" for c in truth.haemorrhage.centre_mm)
        table.add_row("haemorrhage", f"{truth.haemorrhage.volume_ml:.1f} mL at ({centre}) mm")
    for n in truth.nodules:
        centre = ", ".join(f"{c:.1f}" for c in n.centre_mm)
        shown = (
            f"{n.diameter_mm:.1f} mm at ({centre}) mm"
            if n.voxel_count
            else "too small for this grid"
        )
        table.add_row(f"nodule {n.index}", shown)
    if truth.fracture is not None:
        table.add_row("fracture", f"{truth.fracture.bone}, box {truth.fracture.bounding_box_px} px")
    return table
