"""The checkpoint file format and the bundled demo models."""
