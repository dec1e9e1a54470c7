"""The napari shell: dock widget, reader, writer, sample data and settings. Thin over ``core``."""
