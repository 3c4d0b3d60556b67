"""What tests share besides fixtures (those are in conftest.py), each once:

  net          a free port, waiting until a server answers
  servers      real PostgreSQL, the team's MLflow server and sshd on 127.0.0.1
  project      the checkout (ROOT), commands in a project copy, the data stages, made-up stage inputs
  params       the real params.yaml shrunk for a test, written where a stage runs
  digits       real MNIST digits from the shipped sample, and one small trained model
  handwriting  digits drawn as a pen draws them (the drawing page), one person's handwriting
  disk         a full disk: a small tmpfs on a folder, filled
  framing      the oracle of the reader: a framed 28x28 input against the MNIST digit it was made from
  card         the model card's oracle: each number against the run's files, read with json and pandas
"""
