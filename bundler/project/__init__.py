"""What the user writes and what ``airlock lock`` pins: spec, lock, pin, init."""
