"""Handwriting in, by job: loading (image files decoded and shrunk), paper (the paper's level and grain under the
ink), ink (the writing found on the page), framing (MNIST's recipe: crop, fit 20x20, centre of mass), numbers (one
digit or a written number as model inputs); image_model (the image model MLflow serves), drawing_page (the drawing
page), own (your own confirmed digits). Imports only `core`."""
