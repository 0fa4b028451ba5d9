"""Files: posteriors (safetensors + JSON), prior codecs and simulation stores."""
