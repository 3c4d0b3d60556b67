"""MLflow tracking; this package is the only code that imports mlflow. By job:

  store     where the store is, whether its server answers, the experiment, attaching to a run by id
  training  the MLflow run of one training: opened, epochs logged live, model logged, closed with its status
  versions  registered names and versions: the naming rule, the tensor LoggedModel, candidates, dead runs
  champion  the champion rule (params.yaml champion:), the race over candidates, the one line saying why
  registry  what the register stage writes: the image model, each export format, test accuracy, the champions
  study     a search's parent run and its trials' runs
  views     the experiment's saved view "Test accuracy first", and the URL that opens it
"""
