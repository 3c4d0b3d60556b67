"""MLflow tracking; this package is the only code that imports mlflow. By job:

  store     where the store is, whether its server answers, the experiment, attaching to a run by id
  training  the MLflow run of one training: opened, epochs logged live, model logged, closed with its status
  registry  the image and ONNX models beside the tensor model, test accuracy on each version, the champion
  study     a search's parent run and its trials' runs
  views     the experiment's saved view "Test accuracy first", and the URL that opens it
"""
