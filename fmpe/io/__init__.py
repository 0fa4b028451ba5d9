"""Files: prior codecs (a prior as JSON and tensors) and simulation stores."""
