"""Reading images: layout, channel axis, levels, pixel size; OME-Zarr metadata."""
