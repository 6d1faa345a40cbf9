"""Fine-tuning runs: validated hyper-parameters, the embedder and the reranker trainers."""
