"""SageMaker: a training entry point (`train.py`), inference handlers
(`inference.py`) for SageMaker's MXNet containers and their model server, and
that container run locally on a model folder (`endpoint.LocalEndpoint`)."""
