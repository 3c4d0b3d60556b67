"""Handwriting in: images (photos, scans, drawings brought to the dataset's form), the image model MLflow serves,
and the drawing page. Imports only `core`."""
