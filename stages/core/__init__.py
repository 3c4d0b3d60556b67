"""What the stages and tools share; nothing here imports a stage, a tool or `reading`:

  errors        the errors a user can act on (the bottom layer)
  files         atomic writes, checked reads, where the code and the project are
  records       every file one stage hands to another (run.json, the splits, ...): its one reader and writer
  entry         how a stage or tool runs as a program: one line per way of ending, signals, quiet TensorFlow
  schema        params.yaml's typed model and its one loader
  datasets      the one registry: names, class names, image shape and framing, files, mirrors, the shipped sample
  idx, mirrors  reading IDX files; whether the official mirrors can be reached
  architectures the model presets (architectures.yaml) and the one builder and loader
  devices       thread pools, precision, seeds, the replicas' strategy
  callbacks     the training's Keras callbacks and its resume state
  augment       train.augment: the training images' augmentation, applied in train's input pipeline
  calibration   temperature scaling, the calibration error, and "not sure"
  card          the model card: a run's data, accuracy, calibration, exports and limits, from its files
  formats       the export formats by name (data only): file, MLflow flavour, registered kind, packages
  shipping      the inference model, its ONNX and LiteRT files and runtimes, and the loader of any model file
  quiet         the console's quieting (known harmless lines, progress bars): no stage's output depends on it
  project_copy  a throwaway git copy of the project: the end-to-end tests' and the benchmark's sandbox
  search/       the search tool's spec, trials and report (`python -m stages.search` is the entry)
  tracking/     MLflow, and the only code that imports it
  next_steps    what `make run` prints after `dvc repro`: the test accuracy and what to do next
  venv          every stage's and tool's first import: without the project's packages, one line, not a traceback
"""
