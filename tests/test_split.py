"""Tests of the split step: ratios, groups, leakage, stratification, seeds, layouts."""

import json
from collections import Counter, defaultdict

import numpy as np
import pandas as pd
import pytest
import tifffile

from orgaseg_core.common.errors import InputFileError, OrgasegError
from orgaseg_core.data.split import (
    assign_groups,
    group_of_crop,
    split_dataset,
    strip_tile_suffix,
    validate_ratios,
)

# --------------------------------------------------------------------------- helpers

def _tiff(path, value, shape=(4, 5), dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, value, dtype=dtype))


def make_segmentation_data(root, n_sources=12, tiles=4):
    """``n_sources`` source images cut into ``tiles`` tiles each, named like preprocess does."""
    k = 0
    for s in range(n_sources):
        for t in range(tiles):
            name = f"plate{s:02d}_r{t // 2}c{t % 2}.tif"
            _tiff(root / "images" / name, k % 250)
            _tiff(root / "masks" / name, k % 7, dtype=np.uint16)
            k += 1
    return root


def make_classification_data(root, n_images=30, classes=("Cyst", "Filled in", "Ring"), seed=0):
    """QuPath-named crops of ``n_images`` source images; each image has crops of several classes."""
    rng = np.random.default_rng(seed)
    k = 0
    for i in range(n_images):
        image_name = f"well_{i:02d}.jpg"
        for cls in classes:
            for j in range(int(rng.integers(0, 4))):
                _tiff(root / cls / f"{image_name}Annotation ({cls})_{k}.tif", k % 250)
                k += 1
    return root


def read_split(out):
    return pd.read_csv(out / "split.csv", keep_default_na=False)


# --------------------------------------------------------------------------- validation

def test_ratios_must_sum_to_one_and_lie_in_range(tmp_path):
    with pytest.raises(OrgasegError, match=r"add up to 1.*train=0.7.*val=0.2.*test=0.2"):
        validate_ratios(0.7, 0.2, 0.2)
    with pytest.raises(OrgasegError, match="between 0 and 1"):
        validate_ratios(1.2, -0.2, 0.0)
    assert validate_ratios(0.8, 0.0, 0.2) == {"train": 0.8, "val": 0.0, "test": 0.2}
    data = make_segmentation_data(tmp_path / "data")
    with pytest.raises(OrgasegError, match="add up to 1"):
        split_dataset(data, tmp_path / "out", mode="segmentation", train=0.5, val=0.1, test=0.1)
    with pytest.raises(OrgasegError, match="'segmentation' or 'classification'"):
        split_dataset(data, tmp_path / "out", mode="detection")
    assert not (tmp_path / "out").exists()


def test_group_names():
    assert strip_tile_suffix("plate1_r0c12") == "plate1"
    assert strip_tile_suffix("plate1_rim") == "plate1_rim"
    assert group_of_crop("plate1_A3.jpgAnnotation (Cyst)_4.tif") == "plate1_A3"
    assert group_of_crop("plate.1.tiffAnnotation (Filled in)_12.tif") == "plate.1"
    assert group_of_crop("img_r0c1_17.tif") == "img"        # extract-objects crop of a tile
    assert group_of_crop("img_17.tif") == "img"
    assert group_of_crop("loose.png") == "loose"


# --------------------------------------------------------------------------- segmentation

def test_segmentation_split_groups_layout_and_copies(tmp_path, unchanged):
    data = make_segmentation_data(tmp_path / "data")
    check = unchanged(data)
    out = tmp_path / "out"
    result = split_dataset(data, out, mode="segmentation", train=0.5, val=0.25, test=0.25, seed=3)
    check()

    table = read_split(out)
    assert list(table.columns) == ["file", "group", "mask", "split"]
    assert len(table) == 48 and table.file.is_unique
    assert (table.file.str.replace("images/", "masks/") == table["mask"]).all()
    # Leakage-free: every group (source image) lies in exactly one split.
    assert table.groupby("group").split.nunique().max() == 1
    assert set(table.group) == {f"plate{s:02d}" for s in range(12)}
    # 12 sources at 0.5 / 0.25 / 0.25 -> exactly 6 / 3 / 3 sources (24 / 12 / 12 files).
    assert Counter(table.split) == {"train": 24, "val": 12, "test": 12}
    assert result.counts == {"train": 24, "val": 12, "test": 12}
    assert result.group_counts == {"train": 6, "val": 3, "test": 3}

    for row in table.itertuples():
        for rel in (row.file, row.mask):
            copied = out / row.split / rel
            assert copied.read_bytes() == (data / rel).read_bytes()
    for split in ("train", "val", "test"):
        images = sorted(p.name for p in (out / split / "images").iterdir())
        assert images == sorted(p.name for p in (out / split / "masks").iterdir())
        assert len(images) == result.counts[split]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "ok" and record["results"]["counts"] == result.counts
    assert "train" in result.summary() and "24 files" in result.summary()


def test_segmentation_uses_tiles_csv_groups_and_zero_ratio_gets_no_folder(tmp_path):
    data = tmp_path / "data"
    # Names carry no tile suffix: only tiles.csv knows that t0..t3 come from one source.
    rows = []
    for s in range(6):
        for t in range(3):
            name = f"s{s}t{t}.tif"
            _tiff(data / "images" / name, s * 3 + t)
            _tiff(data / "masks" / name, 1, dtype=np.uint16)
            rows.append({"file": name, "source": f"src{s}.jpg", "group": f"src{s}"})
    pd.DataFrame(rows).to_csv(data / "tiles.csv", index=False)
    out = tmp_path / "out"
    split_dataset(data, out, mode="segmentation", train=0.5, val=0.0, test=0.5, seed=1)
    table = read_split(out)
    assert set(table.group) == {f"src{s}" for s in range(6)}
    assert table.groupby("group").split.nunique().max() == 1
    assert Counter(table.split) == {"train": 9, "test": 9}
    assert not (out / "val").exists()


def test_segmentation_reports_unmatched_and_needs_pairs(tmp_path):
    data = make_segmentation_data(tmp_path / "data", n_sources=4)
    _tiff(data / "images" / "lonely.tif", 1)
    _tiff(data / "masks" / "stray.tif", 1, dtype=np.uint16)
    result = split_dataset(data, tmp_path / "out", mode="segmentation")
    assert any("lonely.tif" in u for u in result.unmatched)
    assert any("stray.tif" in u for u in result.unmatched)
    assert "lonely.tif" not in read_split(tmp_path / "out").file.str.cat()
    empty = tmp_path / "empty"
    _tiff(empty / "images" / "a.tif", 1)
    _tiff(empty / "masks" / "b.tif", 1)
    with pytest.raises(InputFileError, match="no image"):
        split_dataset(empty, tmp_path / "out2", mode="segmentation")


def test_seed_determinism(tmp_path):
    data = make_segmentation_data(tmp_path / "data", n_sources=20, tiles=1)
    for name in ("a", "b"):
        split_dataset(data, tmp_path / name, mode="segmentation", seed=7)
    split_dataset(data, tmp_path / "c", mode="segmentation", seed=8)
    assert (tmp_path / "a" / "split.csv").read_bytes() == (tmp_path / "b" / "split.csv").read_bytes()
    assert not read_split(tmp_path / "a").split.equals(read_split(tmp_path / "c").split)


def test_tiles_grouping_shares_every_image_out_over_the_splits(tmp_path, unchanged):
    """--groups tiles: 4 images of 4 tiles at 0.75 / 0.25 -> one tile of every image for
    validation and three for training (validation sees every image), each tile whole in one
    split, the group column still the source image, the warning that says validation is
    optimistic."""
    data = make_segmentation_data(tmp_path / "data", n_sources=4, tiles=4)
    check = unchanged(data)
    out = tmp_path / "out"
    result = split_dataset(data, out, mode="segmentation", train=0.75, val=0.25, test=0.0, seed=2,
                           groups="tiles")
    check()
    table = read_split(out)
    assert len(table) == 16 and table.file.is_unique
    assert set(table.group) == {f"plate{s:02d}" for s in range(4)}
    per_source = table.groupby("group").split.value_counts().unstack(fill_value=0)
    assert (per_source["val"] == 1).all() and (per_source["train"] == 3).all()
    assert result.counts == {"train": 12, "val": 4}
    assert result.group_counts == {"train": 4, "val": 4} and result.n_sources == 4
    for row in table.itertuples():
        for rel in (row.file, row.mask):
            assert (out / row.split / rel).read_bytes() == (data / rel).read_bytes()
    assert any("optimistic" in w for w in result.warnings)
    assert "tiles shared out" in result.summary() and "from 4 source images" in result.summary()
    record = json.loads((out / "run.json").read_text())
    assert record["arguments"]["groups"] == "tiles"
    # the same seed gives the same tiles; the default keeps whole images together
    split_dataset(data, tmp_path / "again", mode="segmentation", train=0.75, val=0.25, test=0.0, seed=2,
                  groups="tiles")
    assert (tmp_path / "again" / "split.csv").read_bytes() == (out / "split.csv").read_bytes()
    split_dataset(data, tmp_path / "whole", mode="segmentation", train=0.75, val=0.25, test=0.0, seed=2)
    assert read_split(tmp_path / "whole").groupby("group").split.nunique().max() == 1


def test_tiles_grouping_names_images_with_too_few_tiles_and_is_for_segmentation(tmp_path):
    data = make_segmentation_data(tmp_path / "data", n_sources=3, tiles=1)
    result = split_dataset(data, tmp_path / "out", mode="segmentation", train=0.5, val=0.25, test=0.25,
                           groups="tiles")
    assert any("3 of 3 source images have too few tiles" in w for w in result.warnings)
    with pytest.raises(OrgasegError, match="--groups must be 'images' or 'tiles', got 'pixels'"):
        split_dataset(data, tmp_path / "o2", mode="segmentation", groups="pixels")
    classes = make_classification_data(tmp_path / "classes")
    with pytest.raises(OrgasegError, match="--groups tiles is for --mode segmentation"):
        split_dataset(classes, tmp_path / "o3", mode="classification", groups="tiles")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


# --------------------------------------------------------------------------- classification

def test_classification_stratified_grouped_imagefolder_layout(tmp_path, unchanged):
    data = make_classification_data(tmp_path / "data")
    (data / ".hidden").mkdir()
    _tiff(data / ".hidden" / "x.tif", 1)
    (data / "sorted.csv").write_text("file,class\n")       # files at the top level are ignored
    check = unchanged(data)
    out = tmp_path / "out"
    ratios = {"train": 0.6, "val": 0.2, "test": 0.2}
    result = split_dataset(data, out, mode="classification", seed=0, **ratios)
    check()

    table = read_split(out)
    assert list(table.columns) == ["file", "group", "class", "split"]
    assert set(table["class"]) == {"Cyst", "Filled in", "Ring"}
    assert not table.file.str.contains("hidden").any()
    assert table.groupby("group").split.nunique().max() == 1          # no image in two splits
    expected_groups = {f.name.split(".jpg")[0] for f in data.rglob("*.tif") if ".hidden" not in str(f)}
    assert set(table.group) == expected_groups and len(expected_groups) > 20
    # Stratified: per class, each split holds its fraction within 10 percentage points.
    for cls, part in table.groupby("class"):
        fractions = part.split.value_counts(normalize=True)
        for split, ratio in ratios.items():
            assert abs(fractions.get(split, 0) - ratio) <= 0.1, (cls, split, fractions.to_dict())
    assert result.class_counts["train"]["Cyst"] == ((table["class"] == "Cyst") & (table.split == "train")).sum()

    # ImageFolder layout: out/<split>/<class>/<file>, the same classes in every split,
    # byte-identical copies.
    for split in ratios:
        folders = sorted(p.name for p in (out / split).iterdir())
        assert folders == ["Cyst", "Filled in", "Ring"]
        for folder in (out / split).iterdir():
            assert all(f.is_file() and f.suffix == ".tif" for f in folder.iterdir())
    for row in table.itertuples():
        assert (out / row.split / row.file).read_bytes() == (data / row.file).read_bytes()
    assert sum(1 for _ in out.rglob("*.tif")) == len(table)
    record = json.loads((out / "run.json").read_text())
    assert record["results"]["class_counts"]["val"] == result.class_counts["val"]


def test_classification_one_image_class_warns(tmp_path):
    data = make_classification_data(tmp_path / "data", n_images=10)
    _tiff(data / "Apoptotic" / "well_03.jpgAnnotation (Apoptotic)_999.tif", 5)
    result = split_dataset(data, tmp_path / "out", mode="classification")
    warning = [w for w in result.warnings if "Apoptotic" in w]
    assert warning and "only one image" in warning[0] and str(data / "Apoptotic") in warning[0]
    assert "only one image" in result.summary()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert any("Apoptotic" in w for w in record["results"]["warnings"])
    # The lone crop travels with the other crops of its source image.
    table = read_split(tmp_path / "out")
    assert table.groupby("group").split.nunique().max() == 1


def test_classification_needs_class_folders(tmp_path):
    (tmp_path / "data").mkdir()
    _tiff(tmp_path / "data" / "loose.tif", 1)
    with pytest.raises(InputFileError, match="no class folders"):
        split_dataset(tmp_path / "data", tmp_path / "out", mode="classification")


def test_assign_groups_whole_groups_and_balance():
    counts = {f"g{i}": {"a": 2, "b": i % 3} for i in range(40)}
    assignment = assign_groups(counts, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
    assert set(assignment) == set(counts)
    per_split = defaultdict(Counter)
    for group, split in assignment.items():
        per_split[split].update(counts[group])
    for cls in ("a", "b"):
        total = sum(c[cls] for c in counts.values())
        assert abs(per_split["train"][cls] / total - 0.7) < 0.06
        assert abs(per_split["test"][cls] / total - 0.15) < 0.06
    assert assign_groups(counts, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0) == assignment
    assert assign_groups(counts, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1) != assignment


def test_classification_keeps_qupath_class_names_from_classes_csv(tmp_path):
    """A derived class lives in the folder 'Tumor - Positive'; classes.csv (written by sort-crops
    and extract-objects --class-folders) gives its name back, and split passes it on."""
    from orgaseg_core.common.classes import read_class_names, write_class_names

    data = make_classification_data(tmp_path / "data", classes=("Tumor - Positive", "Cyst"))
    write_class_names(data, {"Tumor: Positive": "Tumor - Positive", "Cyst": "Cyst"})
    split_dataset(data, tmp_path / "out", mode="classification", seed=0)
    table = read_split(tmp_path / "out")
    assert set(table["class"]) == {"Tumor: Positive", "Cyst"}
    assert table.loc[table["class"] == "Tumor: Positive", "file"].str.startswith("Tumor - Positive/").all()
    assert read_class_names(tmp_path / "out") == {"Tumor - Positive": "Tumor: Positive", "Cyst": "Cyst"}
    assert (tmp_path / "out" / "train" / "Tumor - Positive").is_dir()


def test_classifier_training_names_classes_as_qupath_shows_them(tmp_path):
    """train-classifier --data reads the split's classes.csv: the model's class is
    'Tumor: Positive', not its folder name (so analyze writes it back unchanged)."""
    from orgaseg_core.classification.train import _scan_split
    from orgaseg_core.common.classes import write_class_names

    data = make_classification_data(tmp_path / "data", classes=("Tumor - Positive", "Cyst"))
    write_class_names(data, {"Tumor: Positive": "Tumor - Positive", "Cyst": "Cyst"})
    split_dataset(data, tmp_path / "out", mode="classification", seed=0)
    names, files, labels = _scan_split(tmp_path / "out", "train", None, [])
    assert names == ["Cyst", "Tumor: Positive"]
    assert {names[i] for i, f in zip(labels, files) if f.parent.name == "Tumor - Positive"} == {"Tumor: Positive"}
    again, _files, val_labels = _scan_split(tmp_path / "out", "val", names, [])
    assert again == names and set(val_labels) <= {0, 1}


def test_a_linked_class_folder_is_counted_once_and_broken_links_are_reported(tmp_path):
    data = make_classification_data(tmp_path / "data", classes=("Cyst", "Ring"))
    (data / "Cyst again").symlink_to(data / "Cyst", target_is_directory=True)
    (data / "Ring" / "gone.tif").symlink_to(tmp_path / "nowhere.tif")
    result = split_dataset(data, tmp_path / "out", mode="classification", seed=0)
    table = read_split(tmp_path / "out")
    n_cyst = len(list((data / "Cyst").iterdir()))
    assert (table["class"] == "Cyst").sum() == n_cyst and "Cyst again" not in set(table["class"])
    assert any("is a link to 'Cyst'" in w for w in result.warnings)
    assert any("1 broken links left out (gone.tif)" in w for w in result.warnings)
