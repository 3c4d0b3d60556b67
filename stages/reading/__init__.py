"""Handwriting in, by job: loading (image files decoded and shrunk), paper (the paper's level and grain under the
ink), ink (the writing on the page), framing (MNIST's recipe: crop, fit 20x20, centre of mass), numbers (one
digit or a written number as model inputs); reader (the one reader of a trained model and the one answer type),
opening (any model form opened for the reader, with its calibration), folders (a folder or glob of images in, a
CSV of answers out); image_model (the image model MLflow serves), drawing_page (the drawing page), own (your own
confirmed digits). Imports only `core`."""
