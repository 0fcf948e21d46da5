"""Analytics over what the pipeline wrote: cost per accepted image, drift per prompt value, identity history."""
