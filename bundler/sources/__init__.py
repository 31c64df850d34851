"""What arrives pinned and digest-checked: Hub files, downloads, GGUF facts, licenses, wheels."""
