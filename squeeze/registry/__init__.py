"""Where models go: object stores (local, S3), the model registry, the shipped file, the card."""
