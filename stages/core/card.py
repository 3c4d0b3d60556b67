"""The model card of a run (issue 33): what a reader of a registered version needs to weigh it, every number read from
the run's own files through records.py (run.json, dataset.json, metrics.json, per_class.csv, confusion.csv,
export.json), never typed: the data, the training settings, held-out accuracy with its Wilson 95% interval, per-class
precision and recall, the most confused pairs, calibration, own_test, every export format, the known limits (quoted
from docs/, verbatim) and what only `make bench` measures (named, never quoted as this run's). The register stage
writes it to {paths.model_card} and puts it on each version it registers (description and artifact)."""

from __future__ import annotations

from stages.core import records
from stages.core.formats import FORMATS

CONFUSED_PAIRS = 5  # the most confused (actual, read as) pairs listed
CONFIDENCE = 0.95
# What the reader refuses and reads poorly, quoted as the docs say it (tests/test_card.py finds each in its page).
LIMITS = (
    ("docs/handwriting.md", "A file that cannot be read (missing, not an image, blank, over 40 megapixels) gets one "
                            "line on stderr, the others are still read (exit code 1)."),
    ("docs/handwriting.md", "A blank page, a page of noise, a page under a lamp's gradient or a dark margin round "
                            "the paper is still refused"),
    ("docs/handwriting.md", "A softmax is sure of itself even on a scribble."),
    ("docs/handwriting.md", "`not_sure` with its reason, `low confidence` (top probability below 0.7) or `unlike a "
                            "digit` (the 28x28 input has more separate marks or enclosed holes than handwritten digits "
                            "have)"),
)


def wilson(right: int, total: int) -> tuple[float, float]:
    """The Wilson score interval of `right` successes in `total` trials at CONFIDENCE (SciPy's)."""
    from scipy.stats import binomtest

    interval = binomtest(right, total).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def model_card(paths, title: str) -> str:
    """The card of the run whose files `paths` names, headed `title` (the registered name and version)."""
    run, info, metrics = records.read_run(paths), records.read_dataset_info(paths), records.read_metrics(paths)
    per_class = records.read_per_class(paths)
    confusion = records.read_confusion(paths, [str(name) for name in per_class["name"]])
    sections = [f"# Model card: {title}",
                "Every number below is read by the register stage from this run's records: its data, training, "
                "evaluation and export (stages/core/records.py).",
                data_section(info), training_section(run, info), held_out_section(metrics, confusion, info),
                per_class_section(per_class), confused_section(per_class, confusion), calibration_section(run),
                own_section(metrics, info), export_section(records.read_export(paths, missing_ok=True)),
                limits_section(),
                "## Not measured by this run\n\nLatency per format and accuracy on digits in other writing styles "
                "are measured by `make bench` (docs/benchmarks.md), not by a run: not quoted here."]
    return "\n\n".join(sections) + "\n"


def data_section(info: dict) -> str:
    splits = info["splits"]
    sample = f", a sample of `{info['sample_of']}`" if info.get("sample_of") else ""
    sizes = ", ".join(f"{split} {entry['images']:,}" for split, entry in splits.items())
    lines = [f"- dataset `{info['dataset']}`{sample}; data hash `{str(info.get('content_hash', ''))[:16]}`",
             f"- images per split: {sizes}"]
    if own := splits.get("train", {}).get("own_images"):
        lines.append(f"- your own digits in training: {own:,}")
    return "## Data\n\n" + "\n".join(lines)


def training_section(run: records.Run, info: dict) -> str:
    fields = run.fields
    lines = [f"- architecture `{run.architecture}`, {fields.get('parameters', 0):,} parameters, precision "
             f"`{fields.get('precision')}`; kept epoch {fields.get('kept_epoch') or fields.get('epochs_run')} of "
             f"{fields.get('epochs_run')} run, best validation accuracy {fields.get('best_val_accuracy', 0):.4f}"]
    settings = fields.get("settings")
    if settings:
        lines.append(f"- optimizer `{settings['optimizer']}` at learning rate {settings['learning_rate']:g} "
                     f"(`{settings['lr_schedule']}`), {settings['epochs']} epochs of batch {settings['batch_size']}, "
                     f"label smoothing {settings['label_smoothing']:g}, augmentation "
                     f"{'on' if settings['augment'] else 'off'}")
        if info["splits"].get("train", {}).get("own_images"):
            lines.append(f"- one of your digits counts {settings['own_weight']:g} times a dataset image in the loss")
    else:
        lines.append("- the training settings: not recorded (a training from before the model card)")
    return "## Training\n\n" + "\n".join(lines)


def held_out_section(metrics: dict, confusion, info: dict) -> str:
    right, total = int(confusion.trace()), int(confusion.sum())
    low, high = wilson(right, total)
    return (f"## Held-out accuracy\n\n- {metrics['test_accuracy']:.4f}: {right:,} of {total:,} `{info['dataset']}` "
            f"test digits read right; {CONFIDENCE:.0%} Wilson interval {low:.4f} to {high:.4f}\n"
            f"- macro F1 {metrics['macro_f1']:.4f}, cross-entropy {metrics['test_loss']:.4f}")


def per_class_section(per_class) -> str:
    rows = [f"| {row.name} | {row.precision:.4f} | {row.recall:.4f} | {int(row.support):,} |"
            for row in per_class.itertuples()]
    return "## Per class\n\n| class | precision | recall | test digits |\n|---|---|---|---|\n" + "\n".join(rows)


def confused_pairs(confusion) -> list[tuple[int, int, int]]:
    """(actual, read as, count) of the most frequent mistakes, most first (ties: by actual, then read as)."""
    pairs = [(int(confusion[a, p]), a, p) for a in range(len(confusion)) for p in range(len(confusion))
             if a != p and confusion[a, p] > 0]
    return [(a, p, count) for count, a, p in sorted(pairs, key=lambda pair: (-pair[0], pair[1], pair[2]))[
        :CONFUSED_PAIRS]]


def confused_section(per_class, confusion) -> str:
    names = list(per_class["name"])
    pairs = confused_pairs(confusion)
    if not pairs:
        return "## Most confused\n\nno mistakes on the held-out digits"
    rows = [f"| {names[a]} | {names[p]} | {count:,} |" for a, p, count in pairs]
    return "## Most confused\n\n| actual | read as | test digits |\n|---|---|---|\n" + "\n".join(rows)


def calibration_section(run: records.Run) -> str:
    fields = run.fields
    if "val_ece" not in fields:
        return "## Calibration\n\nnot calibrated: the training recorded no temperature"
    return (f"## Calibration\n\n- temperature T {run.temperature:.4f}, fitted on the validation digits; every door "
            f"answers with it (docs/handwriting.md)\n- expected calibration error on the validation digits: "
            f"{fields['val_ece']:.4f} before, {fields['val_ece_calibrated']:.4f} after")


def own_section(metrics: dict, info: dict) -> str:
    own = info["splits"].get("own_test")
    if "own_test_accuracy" not in metrics or not own:
        return "## Your own digits\n\nnone held out (data.own off, or no digits yet: docs/own-digits.md)"
    return (f"## Your own digits\n\n- own_test accuracy {metrics['own_test_accuracy']:.4f} on {own['images']:,} "
            "of your held-out digits")


def export_section(report: dict) -> str:
    files, rows = report.get("files", {}), []
    for name, spec in FORMATS.items():
        if name not in files:
            rows.append(f"| `{name}` | `{spec.file}` | not exported (export.formats) | | |")
            continue
        entry = files[name]
        rows.append(f"| `{name}` | `{spec.file}` | {entry['bytes']:,} | {entry['test_accuracy']:.4f} | "
                    f"{report.get(name, {}).get('agreement', 0):.4f} |")
    head = "| format | file | bytes | test accuracy | same class as Keras |\n|---|---|---|---|---|\n"
    return ("## Export formats\n\nEach file run by its own runtime on the held-out digits (the export stage).\n\n"
            + head + "\n".join(rows))


def limits_section() -> str:
    quotes = "\n".join(f"- {page}: \"{quote}\"" for page, quote in LIMITS)
    return f"## Known limits\n\nAs the docs say it:\n\n{quotes}"
