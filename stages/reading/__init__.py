"""Handwriting in: images (photos, scans, drawings brought to the dataset's form), image_model (the image model
MLflow serves), drawing_page (the drawing page), own (your own confirmed digits). Imports only `core`."""
