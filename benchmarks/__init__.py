"""Performance measurements against peer libraries (ratios in one run). Never run as tests."""
