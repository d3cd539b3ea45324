"""A generated experiment for the example: wells of a control and a treatment with a planted effect.

:func:`make_demo_experiment` writes, for every condition, ``wells_per_condition`` wells of one
image each (``images/<well>_<condition>.tif``, 8-bit grey TIFFs that carry their pixel size in
ImageJ's metadata), their annotations (``geojsons/``), the design (``design.csv``: image, well,
condition) and what was planted (``planted.json``): per condition the chance of each class and
the factor on the organoids' radii, and the class counts and areas as generated. The treatment
shifts the class mix and makes organoids larger, so an analysis of the images can be checked
against known effects.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..common.errors import OptionError
from ..common.outputs import atomic_path, step_run, write_csv, write_json
from .demo import CLASSES, get_style, synthesise_image

log = logging.getLogger(__name__)

#: µm per pixel written into the example's images (a 10x objective on a common camera).
EXAMPLE_PIXEL_SIZE_UM = 0.65


@dataclass(frozen=True)
class Condition:
    """A planted condition: the chance of each class (weights, normalised) and a factor on the
    organoids' radii (areas scale with its square)."""

    class_weights: Mapping[str, float]
    radius_factor: float = 1.0


#: The example's experiment: the treatment triples the share of branched organoids (20% -> 60%),
#: removes most burned-out ones and makes organoids 15% wider (32% more area; kept within the
#: sizes the example's models are trained on, so that what is measured is the effect, not a model
#: failure). Branched rather than cystic: the example's quick StarDist misses most cysts of the
#: generator (see the README), which would hide a shift in cysts.
EXAMPLE_CONDITIONS = {
    "control": Condition({c: 0.2 for c in CLASSES}),
    "treated": Condition({"Cyst": 0.1, "Filled in": 0.1, "Early branching": 0.15, "Branched": 0.6,
                          "Burned out": 0.05}, radius_factor=1.15),
}


@dataclass
class ExperimentResult:
    out: Path
    images: list[Path] = field(default_factory=list)
    design_csv: Path | None = None
    planted_json: Path | None = None

    def summary(self) -> str:
        return (f"demo experiment: {len(self.images)} images (one per well) in {self.out / 'images'}, "
                f"design {self.design_csv}, planted effects {self.planted_json}")


def well_names(n: int, start: int = 0) -> list[str]:
    """Wells of a 96-well plate in row order: A01, A02, ... A12, B01 ..."""
    return [f"{'ABCDEFGH'[(start + i) // 12]}{(start + i) % 12 + 1:02d}" for i in range(n)]


def make_demo_experiment(out: Path, *, wells_per_condition: int = 3, seed: int = 0,
                         size: tuple[int, int] = (760, 1008),
                         conditions: Mapping[str, Condition] = EXAMPLE_CONDITIONS,
                         pixel_size: float = EXAMPLE_PIXEL_SIZE_UM, overwrite: bool = False) -> ExperimentResult:
    """Write the experiment (see the module notes) to ``out``; the same seed gives the same files."""
    import pandas as pd
    from tqdm import tqdm

    if int(wells_per_condition) < 1:
        raise OptionError(f"wells per condition must be >= 1, got {wells_per_condition}")
    if 96 < wells_per_condition * len(conditions):
        raise OptionError("the experiment's wells must fit one 96-well plate")
    out = Path(out)
    arguments = {"out": out, "wells_per_condition": int(wells_per_condition), "seed": int(seed),
                 "size": list(size), "pixel_size": pixel_size, "overwrite": overwrite,
                 "conditions": {k: {"class_weights": dict(v.class_weights), "radius_factor": v.radius_factor}
                                for k, v in conditions.items()}}
    style = get_style("default")
    with step_run("demo-experiment", out, arguments, overwrite=overwrite) as record:
        result = ExperimentResult(out=out)
        design, generated = [], {name: {"counts": {c: 0 for c in CLASSES}, "areas_um2": []} for name in conditions}
        plan = [(k, name, well) for k, name in enumerate(conditions)
                for well in well_names(wells_per_condition, start=k * wells_per_condition)]
        for k, name, well in tqdm(plan, desc="experiment images", unit="image", disable=None):
            condition = conditions[name]
            rng = np.random.default_rng([int(seed), k, int(well[1:]), ord(well[0])])
            image = synthesise_image(tuple(size), rng, class_weights=condition.class_weights,
                                     style=replace(style, radius_scale=style.radius_scale * condition.radius_factor))
            file_name = f"{well}_{name}.tif"
            path = out / "images" / file_name
            _write_tiff_with_pixel_size(path, np.round(image.intensity).astype(np.uint8), pixel_size)
            features = [obj.feature() for obj in image.objects]
            write_json(out / "geojsons" / f"{file_name}.geojson", {"type": "FeatureCollection", "features": features})
            for obj in image.objects:
                if obj.kind == "organoid" and obj.class_name:
                    generated[name]["counts"][obj.class_name] += 1
                    generated[name]["areas_um2"].append(_area(obj.feature()) * pixel_size ** 2)
            design.append({"image": file_name, "well": well, "condition": name})
            result.images.append(path)
        result.design_csv = write_csv(out / "design.csv", pd.DataFrame(design))
        planted = {}
        for name, condition in conditions.items():
            total = sum(condition.class_weights.values())
            counts = generated[name]["counts"]
            n = sum(counts.values())
            planted[name] = {"class_chance": {c: condition.class_weights.get(c, 0.0) / total for c in CLASSES},
                             "radius_factor": condition.radius_factor, "generated_counts": counts,
                             "generated_fractions": {c: counts[c] / n if n else None for c in CLASSES},
                             "generated_median_area_um2": float(np.median(generated[name]["areas_um2"]))
                             if generated[name]["areas_um2"] else None}
        result.planted_json = write_json(out / "planted.json", planted)
        record.results.update({"images": len(result.images), "planted": planted})
    log.info("%s", result.summary())
    return result


def _area(feature: dict[str, Any]) -> float:
    from shapely.geometry import shape

    return float(shape(feature["geometry"]).area)


def _write_tiff_with_pixel_size(path: Path, pixels: np.ndarray, pixel_size: float) -> Path:
    """An ImageJ TIFF whose resolution tags and unit say ``pixel_size`` µm per pixel."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, pixels, imagej=True, resolution=(1.0 / pixel_size, 1.0 / pixel_size),
                         metadata={"unit": "um"}, compression="zlib")
    return path
