"""The code of the logged MLflow model (MLflow's "models from code"): MLflow runs this file when it
logs and when it loads the model, instead of unpickling an object; the class is
:class:`rts.inference.mlflow_model.PackageModel`, shipped with the model as its code."""

from mlflow.models import set_model

from rts.inference.mlflow_model import PackageModel

set_model(PackageModel())
