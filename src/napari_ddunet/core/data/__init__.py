"""Data generators and sample images: the paper's synthetic task, Blue Marble, sample metadata."""
