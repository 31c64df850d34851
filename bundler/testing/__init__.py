"""Test helpers that ship with the product: a local Hub server, tiny GGUF models."""
