"""The DDU-Net itself: configuration, building blocks, encoders and decoders, the subdomain mosaic."""
