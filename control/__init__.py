"""abgate control plane: the control API, the CLI and process lifecycles."""
