"""SageMaker: a training entry point (`train.py`), inference handlers
(`inference.py`) for SageMaker's MXNet containers and their model server, and
that container run locally on a model folder (`endpoint.LocalEndpoint`); the
engines a folder is served on (`engines`), and its int8 measured on the
user's text before it is (`calibration`, `bert-gluon quantize`)."""
