"""Fine-tuning: job settings and presets, the job queue in Postgres, the worker, the training entry
point (python -m core.training.run) and the adapters it produces."""
