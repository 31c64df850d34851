"""Code that runs on the target host: standard library only, Python 3.8+."""
