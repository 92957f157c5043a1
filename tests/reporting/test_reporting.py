from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coinseg.reporting import (
    comparison_grid,
    overlay,
    progress_plot,
    sample_grid,
    write_report,
)


def _open_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def _no_tmp_left(folder: Path) -> None:
    assert not list(folder.glob("*.tmp"))


# ---------------------------------------------------------------- overlay


def _four_by_four():
    image = np.full((4, 4), 0.5)
    gt = np.zeros((4, 4), dtype=bool)
    pred = np.zeros((4, 4), dtype=bool)
    gt[0, 0] = pred[0, 0] = True  # TP
    pred[1, 1] = True  # FP
    gt[2, 2] = True  # FN
    return image, pred, gt


def test_overlay_colours():
    image, pred, gt = _four_by_four()
    out = overlay(image, pred, gt, outline=False)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    r, g, b = (int(v) for v in out[0, 0])
    assert g > r + 40 and g > b + 40  # TP greenish
    r, g, b = (int(v) for v in out[1, 1])
    assert r > g + 40 and r > b + 40  # FP reddish
    r, g, b = (int(v) for v in out[2, 2])
    assert r > b + 40 and g > b + 40  # FN yellowish
    assert tuple(out[3, 3]) == (128, 128, 128)  # untouched grey


def test_overlay_outlines_gt_in_cyan():
    image = np.zeros((6, 6))
    gt = np.zeros((6, 6), dtype=bool)
    gt[1:5, 1:5] = True
    out = overlay(image, np.zeros_like(gt), gt)
    assert tuple(out[1, 1]) == (0, 255, 255)  # boundary
    assert tuple(out[2, 2]) != (0, 255, 255)  # interior stays FN-coloured
    assert tuple(out[0, 0]) == (0, 0, 0)  # background


def test_overlay_without_gt_and_bad_shape():
    image, pred, _ = _four_by_four()
    out = overlay(image, pred, None)
    assert out[1, 1, 0] > out[1, 1, 1]
    with pytest.raises(ValueError):
        overlay(image, pred[:3], None)


# ---------------------------------------------------------------- figures


def test_comparison_grid(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.random((16, 16)) for _ in range(3)]
    gts = [np.zeros((16, 16), dtype=bool) for _ in range(3)]
    gts[0][4:9, 4:9] = True
    rows = {"coin": [g.copy() for g in gts], "rise": [rng.random((16, 16)) > 0.8 for _ in range(3)]}
    maps = {"coin": [rng.random((16, 16)) for _ in range(3)]}
    path = comparison_grid(images, gts, rows, tmp_path / "figs" / "comparison.png", maps=maps, title="test")
    width, height = _open_png(path)
    assert width <= 2000 and height > width / 3 * 3  # 4 rows of 3 columns plus labels
    _no_tmp_left(path.parent)

    with pytest.raises(ValueError):
        comparison_grid(images, gts[:2], rows, tmp_path / "bad.png")


def test_comparison_grid_many_columns_stays_narrow(tmp_path):
    images = [np.zeros((8, 8)) for _ in range(30)]
    gts = [np.zeros((8, 8), dtype=bool) for _ in range(30)]
    path = comparison_grid(images, gts, {"coin": gts}, tmp_path / "wide.png")
    assert _open_png(path)[0] <= 2000


def test_sample_grid(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (10, 12, 12))
    x_cf = np.clip(x + rng.normal(0, 0.2, x.shape), -1, 1)
    path = sample_grid(x, x_cf, tmp_path / "samples.png")
    _open_png(path)
    _open_png(sample_grid(x[:1, None], x_cf[:1, None], tmp_path / "one.png"))
    _no_tmp_left(tmp_path)


def test_progress_plot_with_empty_cells(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text(
        "epoch,step,train_loss,val_iou,empty,note\n0,10,0.9,,,a\n0,20,0.7,0.3,,b\n1,30,,0.4,,c\n1,40,0.5,,,d\n"
    )
    _open_png(progress_plot(csv_path, tmp_path / "progress.png"))
    _no_tmp_left(tmp_path)


def test_progress_plot_one_row_and_no_numbers(tmp_path):
    one = tmp_path / "one.csv"
    one.write_text("step,loss\n5,0.25\n")
    _open_png(progress_plot(one, tmp_path / "one.png"))
    header_only = tmp_path / "none.csv"
    header_only.write_text("step,loss\n")
    _open_png(progress_plot(header_only, tmp_path / "none.png"))
    no_step = tmp_path / "nostep.csv"
    no_step.write_text("loss\n1\n")
    with pytest.raises(ValueError, match="step"):
        progress_plot(no_step, tmp_path / "nostep.png")


# ---------------------------------------------------------------- report

METRICS = {
    "coinseg_version": "0.1.0",
    "model_run": "runs/coin",
    "manifest": "data/manifest.csv",
    "split": "test",
    "n_slices": 300,
    "n_abnormal": 190,
    "n_normal": 110,
    "classifier": {"accuracy": 0.97, "auroc": 0.99},
    "methods": {
        "coin": {
            "kind": "counterfactual",
            "threshold": 0.25,
            "postprocess": False,
            "pooled_iou": 0.6461,
            "mean_iou": 0.5,
            "mean_dice": 0.6,
            "normal_fp_rate": 0.1,
            "pixel_ap": 0.7,
            "cv": 0.95,
            "flip_rate": 0.9,
            "fid_paired": None,
            "fid_realism": None,
            "lesion_sensitivity_brighter": 0.8,
            "lesion_sensitivity_darker": 0.0,
            "seconds_per_slice": 0.012345,
            "extent": "half-peak",
        },
        # no "pixel_ap" key at all, no lesion counts (a report of an older evaluation), and nulls
        "rise": {
            "kind": "attribution",
            "threshold": 0.975,
            "pooled_iou": 0.397,
            "mean_iou": None,
            "mean_dice": 0.4,
            "normal_fp_rate": 0.2,
            "cv": None,
            "fid_paired": None,
            "fid_realism": None,
            "seconds_per_slice": 1.5,
        },
    },
    "notes": ["FID unavailable: no Inception weights", "a <b>bold</b> & risky note"],
    "figures": {"comparison": "comparison.png", "overlay": "overlay.png"},
}


def test_write_report(tmp_path):
    Image.new("RGB", (4, 4), (0, 200, 0)).save(tmp_path / "comparison.png")  # overlay.png is missing
    md_path, html_path = write_report(METRICS, tmp_path)
    _no_tmp_left(tmp_path)

    md = md_path.read_text()
    header = (
        "| method | kind | threshold | extent | FID (paired) | FID (realism) | CV | pooled IoU | mean IoU | mean Dice "
        "| normal-slice FP rate | pixel AP | lesions found: brighter | darker | s/slice |"
    )
    assert header in md
    assert (
        "| coin | counterfactual | 0.250 | half-peak | – | – | 0.950 | 0.646 | 0.500 | 0.600 | 0.100 | 0.700 | 0.800 | 0.000 | 0.0123 |"
        in md
    )
    assert "| rise | attribution | 0.975 | – | – | – | – | 0.397 | – | 0.400 | 0.200 | – | – | – | 1.5 |" in md
    assert "![comparison](comparison.png)" in md
    assert "overlay.png" in md and "![overlay]" not in md  # noted, not linked
    assert "FID unavailable" in md

    page = html_path.read_text()
    assert "<table" in page and "<th>pooled IoU</th>" in page
    assert "data:image/png;base64," in page
    assert page.count("data:image/png;base64,") == 1
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; risky" in page
    assert "<b>bold" not in page
    assert "Figure &#x27;overlay&#x27; skipped" in page
    assert "cyan" in page and "lower" in page


def test_write_report_minimal(tmp_path):
    md_path, html_path = write_report({}, tmp_path / "out")
    assert "No methods" in md_path.read_text()
    assert "No methods" in html_path.read_text()
