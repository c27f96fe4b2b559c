"""The driver of the search service: command line, study config, search space, Ray Tune, MLflow, export."""
