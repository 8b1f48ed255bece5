"""Speed targets, each a ratio against a peer measured in the same run (`make bench`; results in README.md)."""
