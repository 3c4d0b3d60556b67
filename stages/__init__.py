"""MNIST-style image classification pipeline, three kinds of module (imports point down this list, never up):

- stages, one per DVC stage, run as `python -m stages.<name>`: params (validation), download, preprocess, train,
  evaluate, plots;
- core modules the stages share: common (errors, atomic writes; imports nothing of ours), params (the schema),
  entry (how a stage runs as a program), idx, datasets, architectures, tracking (the only one importing mlflow);
- command-line tools outside the pipeline: predict (your own images), compare (MLflow runs side by side).
"""
