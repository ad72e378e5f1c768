"""refam."""
