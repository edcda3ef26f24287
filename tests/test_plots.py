"""The heat maps' colours: bright is better where a metric has a direction, and higher where it has none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from eval.plots import better_scaled, plot_heatmap


def test_bright_means_better_in_every_directed_column() -> None:
    wide = pd.DataFrame({"acc": [0.6, 0.9], "uniformity": [-1.0, -3.0], "alpha_req": [1.0, 2.0], "geom2:alignment": [
        0.5, 0.2]}, index=["a", "b"])
    scaled, directions = better_scaled(wide)
    assert list(directions) == [1, -1, 0, -1]
    # b has the higher accuracy, the lower (more uniform) uniformity, the lower alignment: all 1; alpha_req: higher
    np.testing.assert_array_equal(scaled, [[0, 0, 0, 0], [1, 1, 1, 1]])


def test_the_heatmap_is_drawn_with_its_colour_bar(tmp_path: Path) -> None:
    rows = [("enc", "sst2", fam, metric, value, "mean") for fam, metric, value in
            (("probe", "acc", 0.8), ("geom", "uniformity", -2.0), ("geom", "alignment_draw_std", 0.1))]
    results = pd.DataFrame(rows, columns=["encoder", "task", "family", "metric", "value", "pooling"])
    path = plot_heatmap(pd.concat([results, results.assign(encoder="other", value=results["value"] / 2)]),
                        tmp_path / "heatmap.png")
    assert path.stat().st_size > 0
