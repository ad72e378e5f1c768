"""Reading and writing files: atomic writes (`files`), safe output names (`names`)."""
