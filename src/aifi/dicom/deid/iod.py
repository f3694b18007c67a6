"""Attribute Types per IOD, to settle the conditional actions (Z/D, X/Z, X/D, X/Z/D, X/Z/U*).

"X unless Z is required" needs to know whether an attribute is Type 1, 2 or 3 in the instance's
IOD. `data/iod-attribute-types.json` holds, for each SOP Class, the Type of every top-level
attribute with a conditional action in Table E.1-1. It is derived from the standard's module
tables as highdicom ships them (run `python -m aifi.dicom.deid.iod` to rebuild it after a
highdicom or table update); at run time only the small derived file is read.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

from aifi.dicom.deid.table import CONDITIONAL_ACTIONS, Action, load_table

TYPES_RESOURCE = "iod-attribute-types.json"
_STRENGTH = {"1": 5, "1C": 4, "2": 3, "2C": 2, "3": 1}


def conditional_action(action: Action, attribute_type: str | None, vr: str) -> Action:
    """The plain action a conditional one becomes for an attribute of the given Type.

    `attribute_type` is "1", "1C", "2", "2C" or "3" (also for an attribute outside the IOD),
    or None when the Type is unknown (nested attributes, unknown SOP Classes): then the engine
    keeps the attribute present with a dummy or empty value, which is valid whatever its Type
    and holds no identity.
    """
    if action not in CONDITIONAL_ACTIONS:
        return action
    if attribute_type is None:
        return {
            Action.Z_D: Action.D,
            Action.X_Z: Action.Z,
            Action.X_D: Action.D,
            Action.X_Z_D: Action.Z,
            Action.X_Z_U: Action.U,
        }[action]
    required = attribute_type.startswith("1")
    present = required or attribute_type.startswith("2")
    if action is Action.Z_D:
        return Action.D if required else Action.Z
    if not present:
        return Action.X
    if action is Action.X_Z:
        return Action.Z
    if action is Action.X_D:
        return Action.D
    if action is Action.X_Z_D:
        return Action.D if required else Action.Z
    return Action.U if required else Action.Z  # X/Z/U*


@lru_cache(maxsize=1)
def _types_by_class() -> dict[str, dict[int, str]]:
    text = resources.files("aifi.dicom.deid").joinpath("data", TYPES_RESOURCE).read_text("utf-8")
    raw: dict[str, dict[str, str]] = json.loads(text)["sop_classes"]
    return {
        sop_class: {int(tag, 16): kind for tag, kind in types.items()}
        for sop_class, types in raw.items()
    }


def iod_attribute_types(sop_class_uid: str) -> dict[int, str] | None:
    """Top-level Types of conditionally-treated attributes for a SOP Class (None if unknown)."""
    return _types_by_class().get(sop_class_uid)


def build_iod_attribute_types() -> dict[str, object]:
    """Derive the per-SOP-Class Types from highdicom's copy of the standard's module tables."""
    from highdicom import _standard_utils as standard  # build-time only
    from pydicom.datadict import tag_for_keyword

    conditional = {
        tag for tag, row in load_table().by_tag.items() if row.basic in CONDITIONAL_ACTIONS
    }
    modules = standard.get_module_attribute_map()
    iods = standard.get_iod_module_map()
    result: dict[str, dict[str, str]] = {}
    for sop_class, iod in sorted(standard.get_sop_class_iod_map().items()):
        types: dict[str, str] = {}
        for module in iods.get(iod, []):
            for attribute in modules.get(module["key"], []):
                if attribute["path"]:
                    continue
                tag = tag_for_keyword(attribute["keyword"])
                if tag is None or tag not in conditional:
                    continue
                key = f"{tag:08X}"
                kind = attribute["type"]
                if _STRENGTH.get(kind, 0) > _STRENGTH.get(types.get(key, ""), 0):
                    types[key] = kind
        result[sop_class] = dict(sorted(types.items()))
    return {
        "source": "highdicom _standard module tables; attributes with conditional actions",
        "sop_classes": result,
    }


def main() -> None:
    """Rebuild the shipped data file."""
    target = Path(__file__).parent / "data" / TYPES_RESOURCE
    target.write_text(json.dumps(build_iod_attribute_types(), indent=1) + "\n", "utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
