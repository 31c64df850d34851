"""The llama.cpp engine from pinned source: sdist, build, CUDA, build cache, smoke test."""
