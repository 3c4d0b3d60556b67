"""The search tool's parts (`python -m stages.search` is the entry): spec (search.yaml's typed model, the values a
trial gets, the study's fingerprint of its spec), trials (a trial as a DVC experiment: its command, its run, its
result, the clean-up after a dead worker), report (the finished study's table, plots and best params)."""
