"""Training data for fine-tuning: query/passage pairs, their sources, held-out splits and
hard negatives."""
