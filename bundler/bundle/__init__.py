"""The bundle format: manifest, metadata region, pack, co-sign, split, verify, summary."""
