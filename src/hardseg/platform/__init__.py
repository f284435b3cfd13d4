"""CLI, Ray cluster connection, Ray Train/Tune orchestration and MLflow tracking."""
