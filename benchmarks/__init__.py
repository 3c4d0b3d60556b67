"""Speed, memory and accuracy measurements of the pipeline: `python -m benchmarks.benchmark` (or `make bench`)."""
