"""The README's main job and what it ships: the demo run, Hub test server, test hosts, models."""
