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
