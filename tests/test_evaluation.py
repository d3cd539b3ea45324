"""evaluate-segmentation: matching, metrics, merges/splits, overlays, the step on folders, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from orgaseg_core.cli import main as cli_main
from orgaseg_core.common.errors import InputFileError, OrgasegError, OutputError
from orgaseg_core.common.overlays import (
    AGREE_COLOUR,
    OTHER_COLOUR,
    PRED_COLOUR,
    TRUTH_COLOUR,
    contour_overlay,
    label_boundaries,
    paint_contours,
    segmentation_overlay,
)
from orgaseg_core.segmentation.evaluation import (
    DEFAULT_THRESHOLDS,
    METRIC_COLUMNS,
    ObjectMatching,
    evaluate_segmentation,
    image_metrics,
    match_objects,
    matched_pairs,
    merge_split_counts,
    pooled_metrics,
    recall_by_class,
    segmentation_metrics,
)

# --------------------------------------------------------------------------- helpers

def squares(shape, boxes, ids=None, dtype=np.uint16):
    """Label image with rectangle ``(r0, r1, c0, c1)`` number i labelled ``ids[i]`` (default i + 1)."""
    labels = np.zeros(shape, dtype=dtype)
    for i, (r0, r1, c0, c1) in enumerate(boxes):
        labels[r0:r1, c0:c1] = ids[i] if ids is not None else i + 1
    return labels


GRID = [(r, r + 10, c, c + 10) for r in (5, 25, 45) for c in (5, 25, 45)]  # nine 10x10 squares


def row(table, threshold):
    return table.set_index("threshold").loc[threshold]


def random_labels(shape, n, seed, rmax=12):
    """``n`` random (possibly overlapping, later on top) discs, painted in their bounding boxes."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint16)
    for i in range(1, n + 1):
        r = int(rng.integers(3, rmax))
        cy, cx = int(rng.integers(0, shape[0])), int(rng.integers(0, shape[1]))
        y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, shape[0]), max(cx - r, 0), min(cx + r + 1, shape[1])
        yy, xx = np.ogrid[y0:y1, x0:x1]
        window = labels[y0:y1, x0:x1]
        window[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = i
    return labels


# --------------------------------------------------------------------------- matching and metrics

def test_perfect_prediction_scores_one_everywhere():
    truth = squares((70, 70), GRID)
    pred = squares((70, 70), GRID, ids=[90, 7, 3000, 12, 5, 6, 77, 8, 1])  # other ids, same objects
    table = image_metrics(truth, pred)
    assert list(table.columns) == METRIC_COLUMNS
    assert table["threshold"].tolist() == list(DEFAULT_THRESHOLDS) == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9]
    assert (table[["tp", "n_true", "n_pred"]] == 9).all().all() and (table[["fp", "fn"]] == 0).all().all()
    for column in ("precision", "recall", "f1", "ap", "mean_matched_iou"):
        assert table[column].tolist() == [1.0] * 9
    assert sorted(matched_pairs(match_objects(truth, pred), 0.9))[:2] == [(1, 90, 1.0), (2, 7, 1.0)]


def test_shifted_square_has_iou_one_third():
    truth = squares((40, 40), [(10, 20, 10, 20)])
    pred = squares((40, 40), [(10, 20, 15, 25)], ids=[4])  # overlap 10x5 = 50, union 150
    m = match_objects(truth, pred)
    assert m.truth_ids.tolist() == [1] and m.pred_ids.tolist() == [4]
    assert m.truth_areas.tolist() == [100] and m.pred_areas.tolist() == [100]
    assert m.pair_truth.tolist() == [1] and m.pair_pred.tolist() == [4]
    assert m.intersection.tolist() == [50] and m.iou[0] == pytest.approx(1 / 3)
    assert matched_pairs(m, 0.3) == [(1, 4, pytest.approx(1 / 3))]
    assert matched_pairs(m, 0.5) == []
    table = image_metrics(truth, pred, [0.3, 0.5])
    low, high = row(table, 0.3), row(table, 0.5)
    assert (low.tp, low.fp, low.fn) == (1, 0, 0) and low.ap == 1.0
    assert low.mean_matched_iou == pytest.approx(1 / 3)
    assert (high.tp, high.fp, high.fn) == (0, 1, 1)
    assert high.precision == high.recall == high.f1 == high.ap == 0.0
    assert math.isnan(high.mean_matched_iou)


def test_missing_and_extra_objects_give_exact_scores():
    truth = squares((70, 70), GRID[:4])                                        # 4 true objects
    pred = squares((70, 70), GRID[:3] + [GRID[5], GRID[8]], ids=[3, 1, 2, 9, 10])  # 3 found + 2 extra
    r = row(image_metrics(truth, pred), 0.5)
    assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (4, 5, 3, 2, 1)
    assert r.precision == pytest.approx(3 / 5)
    assert r.recall == pytest.approx(3 / 4)
    assert r.f1 == pytest.approx(2 * 3 / (4 + 5))
    assert r.ap == pytest.approx(3 / (3 + 2 + 1))
    assert r.mean_matched_iou == 1.0


def test_label_ids_and_dtypes_do_not_change_the_metrics():
    truth = random_labels((120, 150), 40, seed=1)
    pred = np.roll(random_labels((120, 150), 40, seed=1), 2, axis=1)
    reference = image_metrics(truth, pred, [0.3, 0.5, 0.7])
    assert reference["tp"].iloc[1] > 10  # the case is not trivial
    rng = np.random.default_rng(3)
    for dtype, high in ((np.uint16, 65_535), (np.int32, 1_000), (np.uint32, 4_000_000_000),
                        (np.int64, 2 ** 40)):
        # A random injective relabelling to large, non-consecutive ids (huge ids take the sort path).
        new_t = np.zeros(int(truth.max()) + 1, dtype)
        new_t[1:] = rng.choice(np.arange(1, high, max(1, high // 5000), dtype=np.int64), truth.max(), replace=False)
        new_p = np.zeros(int(pred.max()) + 1, dtype)
        new_p[1:] = rng.choice(np.arange(1, high, max(1, high // 5000), dtype=np.int64), pred.max(), replace=False)
        pd.testing.assert_frame_equal(image_metrics(new_t[truth], new_p[pred], [0.3, 0.5, 0.7]), reference)


def test_sparse_pair_counting_gives_the_same_pairs(monkeypatch):
    import orgaseg_core.segmentation.evaluation as evaluation

    truth = random_labels((120, 150), 40, seed=4)
    pred = np.roll(random_labels((120, 150), 40, seed=5), 3, axis=0)
    dense = match_objects(truth, pred)
    monkeypatch.setattr(evaluation, "_DENSE_PAIR_LIMIT", 0)  # force the sort-based path
    sparse = match_objects(truth, pred)
    assert dense.iou.size > 20
    for name in ("pair_truth", "pair_pred", "intersection", "iou", "truth_areas", "pred_areas"):
        np.testing.assert_array_equal(getattr(sparse, name), getattr(dense, name))
    # Intersections agree with a direct count for every pair.
    for t, p, n in zip(dense.pair_truth, dense.pair_pred, dense.intersection):
        assert n == np.count_nonzero((truth == t) & (pred == p))


@pytest.mark.parametrize("big", [7, 3_000_000_000])
def test_image_without_background(big):
    truth = np.full((10, 10), big, np.uint32)
    truth[:, 5:] = big + 1
    pred = np.full((10, 10), 1, np.uint32)  # one object covering everything: a merge
    m = match_objects(truth, pred)
    assert m.truth_ids.tolist() == [big, big + 1] and m.truth_areas.tolist() == [50, 50]
    assert m.pred_ids.tolist() == [1] and m.pred_areas.tolist() == [100]
    assert m.intersection.tolist() == [50, 50] and m.iou.tolist() == [0.5, 0.5]
    assert merge_split_counts(m).merges == 1
    assert image_metrics(truth, truth, [0.9])["ap"].tolist() == [1.0]


def test_empty_images():
    empty = np.zeros((20, 20), np.uint16)
    one = squares((20, 20), [(2, 8, 2, 8)])
    both_empty = image_metrics(empty, empty, [0.5]).iloc[0]
    assert (both_empty.n_true, both_empty.n_pred, both_empty.tp) == (0, 0, 0)
    assert both_empty.precision == both_empty.recall == both_empty.f1 == both_empty.ap == 1.0
    assert math.isnan(both_empty.mean_matched_iou)
    for truth, pred, fp, fn in ((empty, one, 1, 0), (one, empty, 0, 1)):
        r = image_metrics(truth, pred, [0.5]).iloc[0]
        assert (r.tp, r.fp, r.fn) == (0, fp, fn)
        assert r.precision == r.recall == r.f1 == r.ap == 0.0


def test_bad_arrays_and_thresholds():
    a = squares((10, 10), [(1, 4, 1, 4)])
    with pytest.raises(ValueError, match="shape"):
        match_objects(a, a[:, :5])
    with pytest.raises(ValueError, match="integer"):
        match_objects(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="negative"):
        match_objects(a, -a.astype(np.int16))
    with pytest.raises(ValueError, match="threshold"):
        image_metrics(a, a, [0.0])
    with pytest.raises(ValueError, match="2 true label images but 1"):
        segmentation_metrics([a, a], [a])


def make_matching(pairs, n_true, n_pred):
    """An ObjectMatching with hand-chosen IoUs (truth index, pred index, iou); ids = index + 1."""
    ti, pi, iou = (np.array(v) for v in zip(*pairs))
    return ObjectMatching(shape=(1, 1), truth_ids=np.arange(1, n_true + 1), truth_areas=np.full(n_true, 100),
                          pred_ids=np.arange(1, n_pred + 1), pred_areas=np.full(n_pred, 100),
                          pair_truth_index=ti, pair_pred_index=pi,
                          intersection=np.round(iou * 100).astype(np.int64), iou=iou.astype(float))


def test_low_threshold_matching_is_optimal_not_greedy():
    # Greedy (best IoU first) would take only A-X; the optimum matches A-Y and B-X.
    m = make_matching([(0, 0, 0.45), (0, 1, 0.3), (1, 0, 0.3)], 2, 2)
    assert matched_pairs(m, 0.25) == [(1, 2, 0.3), (2, 1, 0.3)]
    assert matched_pairs(m, 0.4) == [(1, 1, 0.45)]
    # Among matchings with equally many pairs, the largest total IoU wins.
    m = make_matching([(0, 0, 0.4), (0, 1, 0.3), (1, 0, 0.3), (1, 1, 0.35)], 2, 2)
    assert matched_pairs(m, 0.2) == [(1, 1, 0.4), (2, 2, 0.35)]


def test_iou_of_exactly_one_half_is_matched_once():
    truth = squares((20, 20), [(0, 10, 0, 10)])
    pred = squares((20, 20), [(0, 10, 0, 5), (0, 10, 5, 10)])  # two halves, IoU 0.5 each
    pairs = matched_pairs(match_objects(truth, pred), 0.5)
    assert len(pairs) == 1 and pairs[0][0] == 1 and pairs[0][2] == 0.5
    r = row(image_metrics(truth, pred, [0.5]), 0.5)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)


def test_recall_by_class_counts_matches_per_annotated_class():
    truth = squares((30, 30), [(0, 10, 0, 10), (0, 10, 20, 30), (20, 30, 0, 10)])
    pred = squares((30, 30), [(0, 10, 0, 10), (0, 10, 20, 25)])  # 1 exact, 2 at IoU 0.5, 3 missed
    table = recall_by_class([truth, truth], [pred, np.zeros_like(pred)],
                            [{1: "Cyst", 2: "Branched", 3: "Cyst"}, {1: "Cyst", 2: "Branched", 3: "Cyst"}])
    table = table.set_index("class")
    assert table["objects"].to_dict() == {"Branched": 2, "Cyst": 4}
    assert table.loc["Cyst", "recall"] == 0.25 and table.loc["Branched", "recall"] == 0.5
    assert table.loc["Cyst", "mean_matched_iou"] == 1.0 and table.loc["Branched", "mean_matched_iou"] == 0.5
    none = recall_by_class([truth], [np.zeros_like(pred)], [{1: "Cyst", 2: "Cyst", 3: "Cyst"}]).set_index("class")
    assert none.loc["Cyst", "recall"] == 0.0 and np.isnan(none.loc["Cyst", "mean_matched_iou"])


def test_merges_and_splits():
    truth = squares((60, 60), [(0, 10, 0, 10), (0, 10, 12, 22),       # 1, 2: merged by pred 7
                               (30, 50, 30, 40),                       # 3: split into pred 8 and 9
                               (0, 10, 40, 50)], ids=[1, 2, 3, 4])      # 4: found correctly
    pred = squares((60, 60), [(0, 10, 0, 22), (30, 40, 30, 40), (40, 50, 30, 40), (0, 10, 40, 50)],
                   ids=[7, 8, 9, 5])
    m = match_objects(truth, pred)
    ms = merge_split_counts(m)
    assert (ms.merges, ms.merged_truth, ms.splits, ms.split_pieces) == (1, 2, 1, 2)
    assert ms.merge_pred_ids.tolist() == [7] and ms.split_truth_ids.tolist() == [3]
    # A stricter rule: the truth squares are fully inside pred 7, but each half holds 50% of truth 3.
    strict = merge_split_counts(m, min_fraction=0.9)
    assert (strict.merges, strict.splits) == (1, 1)  # pieces lie fully inside truth 3
    # A prediction that only clips two objects (less than half of each) is no merge.
    clip = squares((60, 60), [(0, 10, 8, 14)])
    assert merge_split_counts(match_objects(truth, clip)).merges == 0
    # A correct prediction has neither.
    none = merge_split_counts(match_objects(truth, truth))
    assert (none.merges, none.splits) == (0, 0)
    with pytest.raises(ValueError, match="min_fraction"):
        merge_split_counts(m, 0)


def test_pooled_metrics_sum_counts_over_images():
    truth_a, truth_b = squares((70, 70), GRID), squares((70, 70), GRID[:1])
    pred_a = squares((70, 70), GRID)                          # 9/9 found
    pred_b = squares((70, 70), [(40, 50, 40, 50)])            # 0/1 found, 1 false positive
    per_a = row(image_metrics(truth_a, pred_a, [0.5]), 0.5)
    per_b = row(image_metrics(truth_b, pred_b, [0.5]), 0.5)
    assert per_a.ap == 1.0 and per_b.ap == 0.0
    pooled = row(segmentation_metrics([truth_a, truth_b], [pred_a, pred_b], [0.5]), 0.5)
    assert (pooled.n_true, pooled.n_pred, pooled.tp, pooled.fp, pooled.fn) == (10, 10, 9, 1, 1)
    assert pooled.ap == pytest.approx(9 / 11)         # not the mean of 1.0 and 0.0
    assert pooled.precision == pooled.recall == pooled.f1 == pytest.approx(0.9)
    assert pooled.mean_matched_iou == 1.0
    same = pooled_metrics([match_objects(truth_a, pred_a), match_objects(truth_b, pred_b)], [0.5])
    pd.testing.assert_frame_equal(same, segmentation_metrics([truth_a, truth_b], [pred_a, pred_b], [0.5]))


def test_agrees_with_stardist_matching():
    from stardist.matching import matching, matching_dataset

    truth = random_labels((160, 200), 70, seed=11)
    pred = np.roll(random_labels((160, 200), 70, seed=11), (2, -3), axis=(0, 1))
    pred = np.maximum(pred, random_labels((160, 200), 15, seed=12) * (pred == 0) * 100).astype(np.uint16)
    other = random_labels((160, 200), 50, seed=13)
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    ours = image_metrics(truth, pred, thresholds)
    for th in thresholds:
        ref = matching(truth, pred, thresh=th)
        r = row(ours, th)
        assert (r.n_true, r.n_pred, r.tp, r.fp, r.fn) == (ref.n_true, ref.n_pred, ref.tp, ref.fp, ref.fn)
        for ours_col, ref_value in (("precision", ref.precision), ("recall", ref.recall), ("f1", ref.f1),
                                    ("ap", ref.accuracy)):
            assert r[ours_col] == pytest.approx(ref_value)
        if ref.tp:
            assert r.mean_matched_iou == pytest.approx(ref.mean_matched_score)
    assert row(ours, 0.5).tp > 20
    pooled = segmentation_metrics([truth, other], [pred, truth], thresholds)
    refs = matching_dataset([truth, other], [pred, truth], thresh=thresholds, by_image=False, show_progress=False)
    for ref in refs:
        r = row(pooled, ref.thresh)
        assert (r.tp, r.fp, r.fn) == (ref.tp, ref.fp, ref.fn) and r.ap == pytest.approx(ref.accuracy)


def test_evaluation_stays_light(tmp_path):
    # The evaluation runs in any environment: no TensorFlow, StarDist or torch may be imported.
    import subprocess
    import sys

    write_labels(tmp_path / "t" / "x.tif", squares((30, 30), [(2, 9, 2, 9)]))
    code = ("import sys; from orgaseg_core.segmentation.evaluation import evaluate_segmentation; "
            f"evaluate_segmentation({str(tmp_path / 't')!r}, {str(tmp_path / 't')!r}, {str(tmp_path / 'out')!r}); "
            "heavy = [m for m in ('tensorflow', 'stardist', 'torch', 'keras') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "out" / "metrics.csv").is_file()


# --------------------------------------------------------------------------- overlays

def test_label_boundaries_and_colours():
    labels = squares((20, 30), [(2, 12, 2, 12), (2, 12, 12, 22)], ids=[1, 5])  # touching squares
    edge = label_boundaries(labels)
    assert edge[labels == 1].sum() == 36 and edge[labels == 5].sum() == 36  # 100 - 8x8 inner pixels
    assert not edge[labels == 0].any()
    rgb = np.zeros((20, 30, 3), np.uint8)
    painted = paint_contours(rgb, labels, {5: (1, 2, 3)})
    assert (painted == edge).all()
    assert tuple(rgb[2, 15]) == (1, 2, 3) and tuple(rgb[2, 5]) == OTHER_COLOUR
    assert tuple(rgb[6, 6]) == (0, 0, 0)


def test_segmentation_overlay_colours_and_shrinking():
    truth = squares((60, 80), [(10, 30, 10, 30), (40, 50, 50, 70)])
    pred = squares((60, 80), [(10, 30, 10, 30), (40, 50, 55, 75)])
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, 40:] = 200
    rgb = segmentation_overlay(image, truth, pred, legend=False)
    assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[10, 20]) == AGREE_COLOUR        # identical outlines
    assert tuple(rgb[45, 50]) == TRUTH_COLOUR        # left edge of the true object only
    assert tuple(rgb[45, 74]) == PRED_COLOUR         # right edge of the predicted object only
    assert tuple(rgb[5, 5]) == (0, 0, 0) and tuple(rgb[5, 60]) == (255, 255, 255)  # stretched image
    blank = segmentation_overlay(None, truth, pred, legend=False)
    assert tuple(blank[20, 20]) == (60, 60, 60) and tuple(blank[5, 60]) == (0, 0, 0)
    small = contour_overlay(image, [(truth, TRUTH_COLOUR, "truth")], max_side=40, legend=False)
    assert small.shape == (30, 40, 3)
    assert (small == np.array(TRUTH_COLOUR, np.uint8)).all(axis=2).any()
    with pytest.raises(ValueError, match="shape"):
        segmentation_overlay(image[:10], truth, pred)


# --------------------------------------------------------------------------- the step on folders

def write_labels(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, labels)


@pytest.fixture
def folders(tmp_path):
    """truth/ (a, b, c, only_truth), pred/ (a, b, c.png, only_pred, a CSV to ignore), images/."""
    truth, pred, images = tmp_path / "truth", tmp_path / "pred", tmp_path / "images"
    shape = (70, 90)
    write_labels(truth / "a.tif", squares(shape, GRID))
    write_labels(pred / "a.tif", squares(shape, GRID[:8] + [(60, 68, 80, 88)]))        # 8 tp, 1 fp, 1 fn
    write_labels(truth / "b.tif", squares(shape, [(0, 10, 0, 10), (0, 10, 12, 22)]))
    write_labels(pred / "b.tif", squares(shape, [(0, 10, 0, 22)], ids=[3]))              # a merge
    write_labels(truth / "c.tiff", squares(shape, [(20, 40, 20, 30)]))
    pred.mkdir(exist_ok=True)
    Image.fromarray(squares(shape, [(20, 30, 20, 30), (30, 40, 20, 30)], dtype=np.uint8)).save(pred / "c.png")  # a split
    write_labels(truth / "only_truth.tif", squares(shape, GRID[:1]))
    write_labels(pred / "only_pred.tif", squares(shape, GRID[:1]))
    (pred / "a_objects.csv").write_text("image,label\na,1\n")
    images.mkdir()
    for stem in ("a", "b"):
        gradient = np.broadcast_to(np.linspace(0, 250, shape[1]).astype(np.uint8)[None, :, None], shape + (3,))
        Image.fromarray(np.ascontiguousarray(gradient)).save(images / f"{stem}.jpg")
    return tmp_path


def test_evaluate_segmentation_end_to_end(folders, unchanged):
    truth, pred, images, out = folders / "truth", folders / "pred", folders / "images", folders / "out"
    checks = [unchanged(truth), unchanged(pred), unchanged(images)]
    result = evaluate_segmentation(truth, pred, out, images=images, thresholds=[0.5, 0.75])
    for check in checks:
        check()
    assert result.n_images == 3 and result.n_true == 9 + 2 + 1 and result.n_pred == 9 + 1 + 2
    assert sorted(p.name for p in out.iterdir()) == ["ap_vs_iou.png", "metrics.csv", "metrics_per_image.csv",
                                                    "overlays", "run.json", "shapes.csv", "summary.json"]
    shapes = pd.read_csv(out / "shapes.csv")  # the 9 pairs matched at IoU 0.5, measured on both sides
    assert len(shapes) == 9 and shapes["image"].tolist() == ["a"] * 8 + ["c"]
    exact = shapes[shapes.image == "a"]
    assert (exact.true_area_px == exact.pred_area_px).all() and (exact.true_perimeter == exact.pred_perimeter).all()
    half = shapes[shapes.image == "c"].iloc[0]  # the 10x20 rectangle against its upper 10x10 half
    assert (half.true_area_px, half.pred_area_px, half.iou) == (200, 100, 0.5)

    per_image = pd.read_csv(out / "metrics_per_image.csv")
    assert list(per_image.columns) == ["image"] + METRIC_COLUMNS + ["merges", "splits"]
    assert per_image["image"].tolist() == ["a", "a", "b", "b", "c", "c"]
    a = per_image[(per_image.image == "a") & (per_image.threshold == 0.5)].iloc[0]
    assert (a.tp, a.fp, a.fn, a.merges, a.splits) == (8, 1, 1, 0, 0) and a.ap == pytest.approx(0.8)
    b = per_image[per_image.image == "b"].iloc[0]
    c = per_image[per_image.image == "c"].iloc[0]
    assert (b.tp, b.merges, b.splits) == (0, 1, 0) and (c.tp, c.merges, c.splits) == (1, 0, 1)

    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS + ["merges", "splits"]
    at_half = row(metrics, 0.5)
    assert (at_half.n_true, at_half.n_pred, at_half.tp, at_half.fp, at_half.fn) == (12, 12, 9, 3, 3)
    assert at_half.ap == pytest.approx(9 / 15) and (at_half.merges, at_half.splits) == (1, 1)

    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["at_iou"]) == {"0.5", "0.7", "0.9"}
    assert summary["at_iou"]["0.5"]["ap"] == pytest.approx(9 / 15)
    assert set(summary["at_iou"]["0.9"]) >= {"precision", "recall", "f1", "ap"}
    assert summary["mean_matched_iou_at_0.5"] == pytest.approx((8 + 0.5) / 9)
    assert (summary["merges"], summary["splits"], summary["images"]) == (1, 1, 3)
    assert summary["shapes"]["pairs"] == 9
    assert summary["shapes"]["area_px"] == {"median_ratio": 1.0, "median_error": 0.0}
    assert any("only_truth.tif" in u for u in summary["unmatched_files"])
    assert any("only_pred.tif" in u for u in summary["unmatched_files"])

    with Image.open(out / "ap_vs_iou.png") as plot:
        assert plot.format == "PNG" and plot.size == (640, 440)
    for stem in ("a", "b", "c"):
        with Image.open(out / "overlays" / f"{stem}.png") as overlay:
            assert overlay.format == "PNG" and overlay.size == (90, 70) and overlay.mode == "RGB"
    overlay_a = np.asarray(Image.open(out / "overlays" / "a.png"))
    assert overlay_a[69, 2, 0] < 20 and overlay_a[69, 87, 0] > 235  # the stretched image is drawn
    assert tuple(overlay_a[60, 85]) == PRED_COLOUR     # the false positive's outline
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png", "b.png", "c.png"]

    run = json.loads((out / "run.json").read_text())
    assert run["step"] == "evaluate-segmentation" and run["status"] == "ok"
    text = result.summary()
    assert "3 image pairs, 12 true and 12 predicted objects" in text
    assert "shapes of the 9 organoids matched at IoU >= 0.5, median measured / true: area 1.000" in text
    assert "only_truth.tif" in text and "c: no image" in text  # c has no image: blank background
    with pytest.raises(OutputError, match="not empty"):
        evaluate_segmentation(truth, pred, out)
    evaluate_segmentation(truth, pred, out, overwrite=True)


def test_shape_agreement_sees_stepped_outlines():
    """Outlines enlarged with nearest neighbour (2x steps) overlap the true disks almost fully
    (IoU > 0.9) but measure 10 % too long and 20 % less round: the shape summary shows it,
    where F1 and IoU cannot."""
    from skimage.draw import disk

    from orgaseg_core.segmentation.shapes import shape_pairs, shape_summary

    small, truth = np.zeros((60, 120), np.uint16), np.zeros((120, 240), np.uint16)
    for label, (r, c) in enumerate([(30, 30), (30, 90)], 1):
        small[disk((r, c), 20)] = label
        truth[disk((2 * r + 0.5, 2 * c + 0.5), 40)] = 3 - label  # ids need not agree
    stepped = small.repeat(2, axis=0).repeat(2, axis=1)
    matching = match_objects(truth, stepped)
    pairs = matched_pairs(matching, 0.5)
    assert [(t, p) for t, p, _ in pairs] == [(1, 2), (2, 1)] and min(i for *_, i in pairs) > 0.9
    table = shape_pairs(truth, stepped, pairs)
    assert table["true_label"].tolist() == [1, 2] and table["pred_label"].tolist() == [2, 1]
    summary = shape_summary(table)
    assert summary["pairs"] == 2
    assert summary["perimeter"]["median_ratio"] > 1.05 and summary["circularity"]["median_ratio"] < 0.9
    assert abs(summary["area_px"]["median_ratio"] - 1) < 0.03
    assert summary["circularity"]["median_error"] == pytest.approx(1 - summary["circularity"]["median_ratio"], abs=1e-4)
    assert shape_summary(shape_pairs(truth, truth, [(1, 1, 1.0), (2, 2, 1.0)]))["perimeter"] == {
        "median_ratio": 1.0, "median_error": 0.0}
    empty = shape_pairs(truth, stepped, [])
    assert empty.empty and shape_summary(empty)["area_px"] == {"median_ratio": None, "median_error": None}


def test_large_overlays_are_shrunk(tmp_path):
    write_labels(tmp_path / "t" / "x.tif", squares((100, 300), [(10, 60, 10, 200)]))
    write_labels(tmp_path / "p" / "x.tif", squares((100, 300), [(10, 60, 20, 200)]))
    evaluate_segmentation(tmp_path / "t", tmp_path / "p", tmp_path / "out", max_overlay_side=150)
    with Image.open(tmp_path / "out" / "overlays" / "x.png") as overlay:
        assert overlay.size == (150, 50)


def test_bad_inputs_name_the_file(tmp_path):
    good = tmp_path / "good"
    write_labels(good / "a.tif", squares((20, 20), [(2, 8, 2, 8)]))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("x\n")
    with pytest.raises(InputFileError, match=r"empty: no ground-truth label images"):
        evaluate_segmentation(empty, good, tmp_path / "out")
    with pytest.raises(InputFileError, match="missing: predicted label images folder does not exist"):
        evaluate_segmentation(good, tmp_path / "missing", tmp_path / "out")
    other = tmp_path / "other"
    write_labels(other / "zzz.tif", squares((20, 20), [(2, 8, 2, 8)]))
    with pytest.raises(OrgasegError, match=r"no file in .*good has a partner .* in .*other.*zzz\.tif"):
        evaluate_segmentation(good, other, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing created for unusable inputs
    with pytest.raises(OrgasegError, match="threshold"):
        evaluate_segmentation(good, good, tmp_path / "out", thresholds=[1.5])

    bad = tmp_path / "bad"
    write_labels(bad / "a.tif", squares((20, 30), [(2, 8, 2, 8)]))               # other size
    with pytest.raises(OrgasegError, match=r"bad/a\.tif: size 30x20 .* ground truth .*good/a\.tif"):
        evaluate_segmentation(good, bad, tmp_path / "out1")
    assert json.loads((tmp_path / "out1" / "run.json").read_text())["status"] == "failed"
    floats = tmp_path / "floats"
    write_labels(floats / "a.tif", np.full((20, 20), 0.5, np.float32))          # not integers
    with pytest.raises(OrgasegError, match=r"floats/a\.tif: label image must hold non-negative integers"):
        evaluate_segmentation(good, floats, tmp_path / "out2")
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(rgb / "a.png")
    with pytest.raises(OrgasegError, match=r"rgb/a\.png: label image must be 2D"):
        evaluate_segmentation(good, rgb, tmp_path / "out3")
    # A bad pair does not stop the others from being evaluated.
    write_labels(good / "b.tif", squares((20, 20), [(2, 8, 2, 8)]))
    write_labels(bad / "b.tif", squares((20, 20), [(2, 8, 2, 8)]))
    with pytest.raises(OrgasegError, match="1 of 2 image pairs failed"):
        evaluate_segmentation(good, bad, tmp_path / "out4")
    assert pd.read_csv(tmp_path / "out4" / "metrics_per_image.csv")["image"].unique().tolist() == ["b"]


def test_cli_exit_codes(folders, capsys):
    truth, pred, out = folders / "truth", folders / "pred", folders / "cli"
    args = ["evaluate-segmentation", "--truth", str(truth), "--pred", str(pred), "--out", str(out)]
    assert cli_main(args + ["--images", str(folders / "images")]) == 0
    printed = capsys.readouterr().out
    assert "3 image pairs" in printed and "0.50" in printed and "merges: 1" in printed
    assert (out / "overlays" / "a.png").is_file()
    assert cli_main(args) == 1
    assert "not empty" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite"]) == 0
    assert cli_main(["evaluate-segmentation", "--truth", str(folders / "nope"), "--pred", str(pred),
                     "--out", str(folders / "cli2")]) == 1
    assert "nope" in capsys.readouterr().err


def test_cli_usage_error_exits_with_2(folders, capsys):
    # --pred is missing: a usage error, reported by click with exit status 2.
    assert cli_main(["evaluate-segmentation", "--truth", str(folders / "truth"),
                     "--out", str(folders / "cli")]) == 2
    assert "--pred" in capsys.readouterr().err
