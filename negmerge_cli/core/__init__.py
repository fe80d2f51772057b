"""The runtime every layer uses: errors, what is said to a person, every file written,
units and limits, strict JSON and pickle reading."""
