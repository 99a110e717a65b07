"""Builders that turn the raw UniMed sources and annotation files into Hub-ready WebDataset shards."""
