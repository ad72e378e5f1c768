"""Applications on top of the library: `refam predict`, `refam analyze`, `refam serve`."""
