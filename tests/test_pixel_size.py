"""Physical units (issue 15): the pixel size read from TIFF metadata (OME-XML, ImageJ, TIFF
resolution tags) or given, and the µm / µm² columns of extract-objects checked against values
computed by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from orgaseg_core import steps
from orgaseg_core.common.errors import OptionError
from orgaseg_core.common.pixel_size import check_pixel_size, read_pixel_size, resolve_pixel_size

IMAGE = np.full((40, 60), 200, np.uint8)


def test_tiff_resolution_tags_in_centimetres_and_inches(tmp_path):
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, IMAGE, resolution=(10000 / 0.5, 10000 / 0.5), resolutionunit="CENTIMETER")
    size = read_pixel_size(cm)
    assert size.um == pytest.approx(0.5) and size.source == "TIFF resolution tags"
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(inch, IMAGE, resolution=(25400 / 2.0, 25400 / 2.0), resolutionunit="INCH")
    assert read_pixel_size(inch).um == pytest.approx(2.0)
    # 72 dpi is what image programs write by default (353 µm): not a microscope's pixel
    default = tmp_path / "72dpi.tif"
    tifffile.imwrite(default, IMAGE, resolution=(72, 72), resolutionunit="INCH")
    assert not read_pixel_size(default).known
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, IMAGE)
    assert read_pixel_size(plain).source == "none"


def test_imagej_and_ome_metadata(tmp_path):
    imagej = tmp_path / "imagej.tif"
    tifffile.imwrite(imagej, IMAGE, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "micron"})
    size = read_pixel_size(imagej)
    assert size.um == pytest.approx(0.65, rel=1e-4) and size.source == "ImageJ"
    ome = tmp_path / "image.ome.tif"
    tifffile.imwrite(ome, IMAGE, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 300, "PhysicalSizeXUnit": "nm",
                                                     "PhysicalSizeY": 300, "PhysicalSizeYUnit": "nm"})
    size = read_pixel_size(ome)
    assert size.um == pytest.approx(0.3) and size.source == "OME-XML"
    # pixels that are not square: the geometric mean keeps areas right, and it is said
    odd = tmp_path / "odd.ome.tif"
    tifffile.imwrite(odd, IMAGE, ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 2.0})
    size = read_pixel_size(odd)
    assert size.um == pytest.approx(1.0) and "not square" in size.note


def test_jpeg_and_png_have_none_and_a_given_size_wins_with_a_conflict_reported(tmp_path, caplog):
    png = tmp_path / "a.png"
    Image.fromarray(IMAGE).save(png, dpi=(300, 300))
    assert not read_pixel_size(png).known
    assert resolve_pixel_size(png, 1.5).um == 1.5
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, IMAGE, resolution=(10000 / 0.5, 10000 / 0.5), resolutionunit="CENTIMETER")
    same = resolve_pixel_size(cm, 0.5)
    assert same.um == 0.5 and same.source == "given" and same.note == ""
    other = resolve_pixel_size(cm, 0.8)
    assert other.um == 0.8 and "differs from the 0.5 µm in the file" in other.note
    assert "differs" in caplog.text
    for bad in ("-1", "0", "abc", "nan", float("inf")):
        with pytest.raises(OptionError, match="--pixel-size"):
            check_pixel_size(bad)
    assert check_pixel_size("auto") is None and check_pixel_size("0.25") == 0.25


def test_extract_objects_writes_micrometres_computed_by_hand(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    labels = np.zeros((40, 60), np.uint16)
    labels[10:20, 10:30] = 1  # 10 x 20 px = 200 px
    image = np.where(labels > 0, 80, 200).astype(np.uint8)
    tifffile.imwrite(images / "known.tif", image, resolution=(10000 / 0.5, 10000 / 0.5), resolutionunit="CENTIMETER")
    Image.fromarray(image).save(images / "unknown.png")
    tifffile.imwrite(masks / "known.tif", labels)
    tifffile.imwrite(masks / "unknown.tif", labels)
    steps.extract_objects(images, masks, tmp_path / "objects")
    table = pd.read_csv(tmp_path / "objects" / "objects.csv").set_index("stem")
    known, unknown = table.loc["known"], table.loc["unknown"]
    assert known["area_px"] == 200 and known["pixel_size_um"] == 0.5
    assert known["area_um2"] == pytest.approx(200 * 0.25)
    assert known["equivalent_diameter_um"] == pytest.approx(2 * math.sqrt(200 / math.pi) * 0.5, rel=1e-3)
    assert known["perimeter_um"] == pytest.approx(known["perimeter"] * 0.5, rel=1e-3)
    assert known["major_axis_length_um"] == pytest.approx(known["major_axis_length"] * 0.5, rel=1e-3)
    assert math.isnan(unknown["area_um2"]) and math.isnan(unknown["pixel_size_um"])
    record = json.loads((tmp_path / "objects" / "run.json").read_text())
    sources = {r["image"]: r["pixel_size"] for r in record["results"]["images"]}
    assert sources["known.tif"] == {"pixel_size_um": 0.5, "source": "TIFF resolution tags"}
    assert sources["unknown.png"] == {"pixel_size_um": None, "source": "none"}
    # no image with a pixel size: the table stays in pixels (no empty µm columns)
    (images / "known.tif").unlink()
    steps.extract_objects(images, masks, tmp_path / "pixels")
    columns = set(pd.read_csv(tmp_path / "pixels" / "objects.csv").columns)
    assert "area_px" in columns and not {"pixel_size_um", "area_um2", "perimeter_um"} & columns
    tifffile.imwrite(images / "known.tif", image, resolution=(10000 / 0.5, 10000 / 0.5), resolutionunit="CENTIMETER")
    # given for all images: wins, and the conflict with the file is recorded
    steps.extract_objects(images, masks, tmp_path / "given", pixel_size="2")
    table = pd.read_csv(tmp_path / "given" / "objects.csv").set_index("stem")
    assert table.loc["unknown", "area_um2"] == pytest.approx(800.0) and table.loc["known", "area_um2"] == pytest.approx(800.0)
    record = json.loads((tmp_path / "given" / "run.json").read_text())
    notes = {r["image"]: r["pixel_size"].get("note", "") for r in record["results"]["images"]}
    assert "differs" in notes["known.tif"] and notes["unknown.png"] == ""


def test_qupath_measurements_in_micrometres_where_the_size_is_known():
    from orgaseg_core.pipelines.analyze import classified_features

    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
               "properties": {"measurements": {"Label": 1, "Probability": 0.9}}}
    row = {"label": 1, "predicted_class": "Cyst", "confidence": 0.8, "prob_Cyst": 0.8, "area_px": 200,
           "perimeter": 56.0, "pixel_size_um": 0.5, "area_um2": 50.0, "perimeter_um": 28.0,
           "equivalent_diameter_um": 7.98, "major_axis_length_um": 11.5, "minor_axis_length_um": 5.7}
    out = classified_features([feature], pd.DataFrame([row]), {}, ["Cyst"])
    m = out[0]["properties"]["measurements"]
    assert m["Area µm^2"] == 50.0 and m["Perimeter µm"] == 28.0 and m["Area px"] == 200
    row.update(pixel_size_um=float("nan"), area_um2=float("nan"))
    m = classified_features([feature], pd.DataFrame([row]), {}, ["Cyst"])[0]["properties"]["measurements"]
    assert "Area µm^2" not in m and m["Area px"] == 200
