"""MNIST-style image classification pipeline. The folder is the map; three rules (tests/test_imports.py):

- the top level is what you run, `python -m stages.<name>`: the 10 DVC stages (params source download collect
  preprocess train export evaluate plots register) and the 4 tools (predict compare search server), and nothing
  else; none imports another;
- `core/` is what they share (errors, files, records, entry, schema, datasets, idx, mirrors, architectures, devices,
  callbacks, augment, calibration, card, formats, shipping, quiet, project_copy, next_steps, venv, search/,
  tracking/) and imports nothing above it;
- `reading/` is handwriting in (images, the image model, the drawing page, your own digits) and imports only core.
"""
