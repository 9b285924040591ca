"""abgate data plane: the sidecar proxy that splits, forwards and measures."""
