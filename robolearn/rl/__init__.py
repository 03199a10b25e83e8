"""RL fine-tuning of behaviour-cloned policies in simulation: agents, replay, collection."""
