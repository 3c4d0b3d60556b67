"""Tests of the latency table's verdicts and rendering (benchmarks/latency.py); the measuring runs in `make bench`."""

from __future__ import annotations

from benchmarks import latency


def row(format: str, p50: float, rate: float) -> dict:
    return {"format": format, "file": f"{format}.file", "bytes": 1_000_000, "accuracy": 0.99, "agreement": 1.0,
            "p50_ms": p50, "p95_ms": 2 * p50, "cpu_p50_ms": p50, "batch_images_per_s": rate, "cold_wall_s": 0.9,
            "cold_cpu_s": 0.8, "load": 3.0}


def test_the_table_says_when_int8_is_not_faster():
    rows = [row("onnx", 0.10, 9000), row("onnx_int8", 0.15, 7000), row("litert", 0.20, 5000),
            row("litert_int8", 0.05, 8000)]
    onnx, litert = latency.int8_verdicts(rows)
    assert onnx.startswith("onnx_int8 is NOT faster than onnx for one image") and "and NOT faster in batches" in onnx
    assert litert.startswith("litert_int8 is faster than litert for one image") and "and faster in batches" in litert
    table = latency.markdown({"rows": rows, "runs": 3, "warm_up": 50, "timed": 300, "batch": 500,
                              "verdicts": [onnx, litert]})
    expected = "| onnx_int8 | onnx_int8.file | 1.00 MB | 0.9900 | 100.00% | 0.150 ms | 0.300 ms |"
    assert sum(line.startswith(expected) for line in table) == 1
    assert f"- {onnx}" in table


def test_a_folder_is_read_in_one_fresh_predict_and_a_text_file_is_refused(model_path, test_digits, tmp_path):
    from PIL import Image

    from stages.core.project_copy import project_env

    folder = tmp_path / "pngs"
    folder.mkdir()
    for index, digit in enumerate(test_digits[:12]):
        Image.fromarray(255 - digit).save(folder / f"{index:02d}.png")
    (tmp_path / "README.md").write_text("# not an image\n")
    root = latency.Path(__file__).parents[1]
    (tmp_path / "params.yaml").write_text((root / "params.yaml").read_text())  # predict's dataset, as in a project
    env = project_env([root])
    measured = latency.folder_reading({"keras": model_path}, folder, tmp_path, env)
    (row,) = measured["rows"]
    assert row["format"] == "keras" and row["images"] == 12 and row["images_per_s"] == 12 / row["wall_s"]
    answers = (tmp_path / "keras.csv").read_text().splitlines()
    assert len(answers) == 1 + 12  # a header and one row per image
    assert "README.md" in measured["not_an_image"]["line"]
    table = latency.markdown({"rows": [], "runs": 1, "warm_up": 1, "timed": 1, "batch": 1, "verdicts": [],
                              "folder": measured})
    assert sum(line.startswith("| keras | 12 |") for line in table) == 1
