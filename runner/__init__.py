"""runner: YAML-driven Keras experiments, tracked in MLflow."""
