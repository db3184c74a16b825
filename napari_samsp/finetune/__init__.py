"""Fine-tuning: data from the store or the data layout, losses, the loop, model versions."""
