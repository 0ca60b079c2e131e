"""Learning: question/answer examples, LoRA training, and the adapter registry."""
