"""``orgaseg example``: the whole available pipeline on generated example data, in one call.

It generates a QuPath-like project export and runs every data step on it, each into its own
folder under ``out``, so a new user sees what every step reads and writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .outputs import step_run

log = logging.getLogger(__name__)


@dataclass
class ExampleResult:
    """Folders written by :func:`run_example`, in pipeline order (step name -> folder)."""

    out: Path
    folders: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"example: all results are in {self.out}"]
        lines += [f"  {step:<28} {folder}" for step, folder in self.folders.items()]
        return "\n".join(lines)


def run_example(out: Path, *, n_images: int = 8, seed: int = 0, size: tuple[int, int] = (760, 1008),
                scale: float = 0.5, tiles: tuple[int, int] = (2, 2), overwrite: bool = False) -> ExampleResult:
    """Generate example data in ``out/data`` and run the data-preparation steps on it.

    Steps and folders: demo-data (``data``), sort-crops (``sorted-crops``), annotations-to-masks
    (``masks``), preprocess (``preprocessed``: grey, vignette removed, ``tiles``, ``scale``),
    split for segmentation (``split-segmentation``) and for classification
    (``split-classification``).
    """
    from .demo import make_demo_data
    from .masks import annotations_to_masks
    from .preprocess import preprocess
    from .sort_crops import sort_crops
    from .split import split_dataset

    out = Path(out)
    arguments = {"out": out, "n_images": n_images, "seed": seed, "size": size, "scale": scale,
                 "tiles": tiles, "overwrite": overwrite}
    with step_run("example", out, arguments, overwrite=overwrite) as record:
        result = ExampleResult(out=out)
        folders = result.folders
        folders["demo-data"] = out / "data"
        demo = make_demo_data(folders["demo-data"], n_images=n_images, seed=seed, size=size,
                              overwrite=overwrite)
        log.info("%s", demo.summary())
        folders["sort-crops"] = out / "sorted-crops"
        log.info("%s", sort_crops(folders["demo-data"] / "crops", folders["sort-crops"],
                                  overwrite=overwrite).summary())
        folders["annotations-to-masks"] = out / "masks"
        log.info("%s", annotations_to_masks(folders["demo-data"] / "geojsons", folders["demo-data"] / "images",
                                            folders["annotations-to-masks"], overwrite=overwrite).summary())
        folders["preprocess"] = out / "preprocessed"
        log.info("%s", preprocess(folders["demo-data"] / "images", folders["preprocess"],
                                  masks=folders["annotations-to-masks"], scale=scale, tiles=tiles,
                                  remove_vignette=True, overwrite=overwrite).summary())
        folders["split (segmentation)"] = out / "split-segmentation"
        log.info("%s", split_dataset(folders["preprocess"], folders["split (segmentation)"],
                                     mode="segmentation", seed=seed, overwrite=overwrite).summary())
        folders["split (classification)"] = out / "split-classification"
        log.info("%s", split_dataset(folders["sort-crops"], folders["split (classification)"],
                                     mode="classification", seed=seed, overwrite=overwrite).summary())
        record.results["folders"] = {k: str(v) for k, v in folders.items()}
    return result
