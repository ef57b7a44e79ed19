"""SageMaker: a training entry point (`train.py`) and inference handlers
(`inference.py`) for SageMaker's MXNet containers and their model server."""
