"""Domain fine-tuning: training data, fine-tuning jobs, evaluation gates, model registry."""
