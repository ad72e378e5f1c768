"""CogVideoX-2b under the contract: no RoPE, but a sin-cos position table added to [226 caption
tokens (zeros) | video] in the patch embedding, which fixes the caption's length; the stock calls
are entry_cogvideox.py's, whose module is loaded the way `load_entries` loads entries."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("refam_contract_entry_cogvideox_shared", Path(__file__).with_name("entry_cogvideox.py"))
_cogvideox = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cogvideox)

ENTRY = _cogvideox.entry("cogvideox_2b", "2b", 226)
