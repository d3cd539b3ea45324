import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from orgaseg_core.cli import main
from orgaseg_core.common.classes import UnsafeClassNameError
from orgaseg_core.common.errors import InputFileError, OutputError
from orgaseg_core.data.sort_crops import class_from_crop_name, sort_crops


def _write_crop(folder, name, value=7):
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / name, np.full((5, 6), value, np.uint8))
    return folder / name


@pytest.fixture
def crops(tmp_path):
    folder = tmp_path / "crops"
    _write_crop(folder, "plate1_A3.jpgAnnotation (Cyst)_1.tif", 1)
    _write_crop(folder, "plate1_A3.jpgAnnotation (Filled in)_2.tif", 2)
    _write_crop(folder, "plate2.tifAnnotation (Filled-in)_1.tif", 3)
    _write_crop(folder, "plate2.tifAnnotation (filled  IN)_2.tif", 4)
    _write_crop(folder, "plate2 (1).tifAnnotation (Branched)_3.tif", 5)
    _write_crop(folder, "plate2.tifAnnotation_4.tif", 6)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.mark.parametrize("name, expected", [
    ("plate1_A3.jpgAnnotation (Cyst)_4.tif", "Cyst"),
    ("img (1).jpgAnnotation (Early branching)_2.tif", "Early branching"),
    ("imgDetection (Burned out)_2.tif", "Burned out"),
    ("crop (Ring).tif", "Ring"),
    ("imgAnnotation_3.tif", None),
    ("imgAnnotation ()_3.tif", ""),
])
def test_class_from_crop_name(name, expected):
    assert class_from_crop_name(name) == expected


def test_sort_crops_copies_and_merges_aliases(crops, tmp_path, unchanged):
    check_inputs = unchanged(crops)
    out = tmp_path / "sorted"
    result = sort_crops(crops, out)
    check_inputs()
    assert result.class_counts == {"Cyst": 1, "Filled in": 3, "Branched": 1}
    assert sorted(p.name for p in (out / "Filled in").iterdir()) == [
        "plate1_A3.jpgAnnotation (Filled in)_2.tif",
        "plate2.tifAnnotation (Filled-in)_1.tif",
        "plate2.tifAnnotation (filled  IN)_2.tif",
    ]
    copied = tifffile.imread(out / "Branched" / "plate2 (1).tifAnnotation (Branched)_3.tif")
    assert copied.shape == (5, 6) and int(copied[0, 0]) == 5
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["file"].tolist() == ["plate2.tifAnnotation_4.tif"]
    assert len(pd.read_csv(out / "sorted.csv")) == 5
    record = json.loads((out / "run.json").read_text())
    assert record["step"] == "sort-crops" and record["status"] == "ok"
    assert record["results"]["class_counts"]["Filled in"] == 3


def test_sort_crops_move_only_on_request(crops, tmp_path):
    out = tmp_path / "sorted"
    sort_crops(crops, out, move=True)
    assert (out / "Cyst" / "plate1_A3.jpgAnnotation (Cyst)_1.tif").is_file()
    # classified crops left the input folder; the unclassified one and the text file stayed
    assert sorted(p.name for p in crops.iterdir()) == ["notes.txt", "plate2.tifAnnotation_4.tif"]


def test_class_map_file(crops, tmp_path):
    class_map = tmp_path / "map.csv"
    class_map.write_text("alias,class\nfilled in,Solid\nBranched,Branching\n")
    result = sort_crops(crops, tmp_path / "out", class_map=class_map)
    assert result.class_counts == {"Cyst": 1, "Solid": 3, "Branching": 1}
    json_map = tmp_path / "map.json"
    json_map.write_text(json.dumps({"FILLED-IN": "Solid"}))
    result = sort_crops(crops, tmp_path / "out2", class_map=json_map)
    assert result.class_counts["Solid"] == 3


@pytest.mark.parametrize("bad", ["..", "a/b", "a\\b", " ", "", "tab\there", "x:/y"])
def test_unsafe_class_name_rejected_and_nothing_written(tmp_path, bad, unchanged):
    folder = tmp_path / "crops"
    _write_crop(folder, "imgAnnotation (Cyst)_1.tif")
    # A name with "/" cannot be a real file name; put it in the class map instead.
    if "/" in bad or "\\" in bad:
        class_map = tmp_path / "map.json"
        class_map.write_text(json.dumps({"Cyst": bad}))
    else:
        _write_crop(folder, f"imgAnnotation ({bad})_2.tif")
        class_map = None
    check_inputs = unchanged(folder)
    out = tmp_path / "out"
    with pytest.raises(UnsafeClassNameError) as info:
        sort_crops(folder, out, class_map=class_map)
    assert ("imgAnnotation" in str(info.value)) or ("map.json" in str(info.value))
    assert not out.exists()
    check_inputs()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["crops"] + (["map.json"] if class_map else []))


def test_refuses_non_empty_output_and_output_inside_input(crops, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    with pytest.raises(OutputError, match="not empty"):
        sort_crops(crops, out)
    assert (out / "keep.txt").read_text() == "earlier result"
    sort_crops(crops, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "earlier result"
    with pytest.raises(OutputError, match="must not be"):
        sort_crops(crops, crops / "sorted")


def test_missing_or_classless_input(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        sort_crops(tmp_path / "nope", tmp_path / "out")
    folder = tmp_path / "crops"
    _write_crop(folder, "imgAnnotation_1.tif")
    with pytest.raises(InputFileError, match="names a class"):
        sort_crops(folder, tmp_path / "out")


def test_cli(crops, tmp_path, capsys):
    assert main(["sort-crops", "--crops", str(crops), "--out", str(tmp_path / "o")]) == 0
    assert "3 class folders" in capsys.readouterr().out
    assert main(["sort-crops", "--crops", str(tmp_path / "missing"), "--out", str(tmp_path / "p")]) == 1
    assert "missing: crops folder does not exist" in capsys.readouterr().err


def test_derived_classes_get_their_qupath_name_back_from_the_export_classes_csv(tmp_path):
    """The export script writes 'Annotation (Tumor - Positive)' (':' cannot be in a file name)
    and crops/classes.csv; the sorted class is 'Tumor: Positive' again, in folder 'Tumor - Positive'."""
    folder = tmp_path / "crops"
    _write_crop(folder, "a.tifAnnotation (Tumor - Positive)_1.tif")
    _write_crop(folder, "a.tifDetection (Tumor - Positive)_2.tif")
    _write_crop(folder, "a.tifAnnotation (CD8 T cell)_3.tif")
    _write_crop(folder, "b.tifAnnotation (cd8 t-cell)_1.tif")
    (folder / "classes.csv").write_text("class,folder\nTumor: Positive,Tumor - Positive\n")
    result = sort_crops(folder, tmp_path / "sorted")
    assert result.class_counts == {"Tumor: Positive": 2, "CD8 T cell": 2}
    assert len(list((tmp_path / "sorted" / "Tumor - Positive").iterdir())) == 2
    assert len(list((tmp_path / "sorted" / "CD8 T cell").iterdir())) == 2
    table = pd.read_csv(tmp_path / "sorted" / "classes.csv")
    assert table.values.tolist() == [["CD8 T cell", "CD8 T cell", 2],
                                     ["Tumor: Positive", "Tumor - Positive", 2]]
