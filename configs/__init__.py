"""The default YAML configs, shipped inside the package (found with importlib.resources)."""
