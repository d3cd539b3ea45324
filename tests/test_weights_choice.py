"""train-segmentation keeps the weights that segment the validation images better, not simply
those of the lowest validation loss (which can be a first-epoch network that finds nothing)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic import disc_pair

from orgaseg_core.segmentation.train import LOWEST_LOSS_WEIGHTS, choose_weights


class _FakeStarDist:
    """Two weight files: "weights_best.h5" finds nothing, "weights_last.h5" finds every dark
    disc (or the other way round); records what was loaded and the thresholds set."""

    def __init__(self, folder, good: str):
        self.folder, self.good, self.loaded, self.thresholds = folder, good, "weights_best.h5", None

    def load_weights(self, name):
        assert (self.folder / name).is_file()
        self.loaded = name

    def optimize_thresholds(self, X, Y, save_to_json=True):
        assert save_to_json is False
        return {"prob": 0.4 if self.loaded == self.good else 0.6, "nms": 0.3}

    def predict_instances(self, x, n_tiles=None, prob_thresh=None, nms_thresh=None, show_tile_progress=False):
        from skimage.measure import label, regionprops

        labels = label(x < 0.5).astype(np.int32) if self.loaded == self.good else np.zeros(x.shape, np.int32)
        angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
        coords = [np.stack([r.centroid[0] + 3 * np.sin(angles), r.centroid[1] + 3 * np.cos(angles)])
                  for r in regionprops(labels)]
        return labels, {"coord": np.array(coords).reshape(-1, 2, 8), "prob": np.full(len(coords), 0.9)}


@pytest.mark.parametrize("good", ["weights_last.h5", "weights_best.h5"])
def test_choose_weights_keeps_the_better_network(tmp_path, good):
    for name, content in (("weights_best.h5", b"lowest loss"), ("weights_last.h5", b"last epoch")):
        (tmp_path / name).write_bytes(content)
    grey, truth = disc_pair(np.random.default_rng(0))
    model = _FakeStarDist(tmp_path, good)
    chosen = choose_weights(model, tmp_path, [grey], [truth], [grey.astype(np.float32)], [truth], 1.0, (1.0, 99.8))
    assert chosen["scores"]["last" if good == "weights_last.h5" else "best"] > 0.5
    assert chosen["scores"]["best" if good == "weights_last.h5" else "last"] == 0.0
    thresholds = json.loads((tmp_path / "thresholds.json").read_text())
    assert thresholds == {"prob": 0.4, "nms": 0.3} == chosen["thresholds"][chosen["chosen"]]
    assert model.thresholds == thresholds
    if good == "weights_last.h5":
        assert chosen["chosen"] == "last"
        # what segment loads (weights_best.h5) is now the last epoch's network
        assert (tmp_path / "weights_best.h5").read_bytes() == b"last epoch"
        assert (tmp_path / LOWEST_LOSS_WEIGHTS).read_bytes() == b"lowest loss"
        assert model.loaded == "weights_last.h5"
    else:
        assert chosen["chosen"] == "best" and model.loaded == "weights_best.h5"
        assert (tmp_path / "weights_best.h5").read_bytes() == b"lowest loss"
        assert not (tmp_path / LOWEST_LOSS_WEIGHTS).exists()


def test_choose_weights_without_last_weights(tmp_path):
    (tmp_path / "weights_best.h5").write_bytes(b"lowest loss")
    grey, truth = disc_pair(np.random.default_rng(1))
    model = _FakeStarDist(tmp_path, "weights_best.h5")
    chosen = choose_weights(model, tmp_path, [grey], [truth], [grey.astype(np.float32)], [truth], 1.0, (1.0, 99.8))
    assert chosen["chosen"] == "best" and list(chosen["scores"]) == ["best"]
