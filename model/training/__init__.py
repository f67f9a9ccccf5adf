"""Training the network on generated city blocks: losses and the training loop."""
