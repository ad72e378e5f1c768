"""CogVideoX 1.5 under the contract: tokens of 2 x 2 x 2 latent cells (an image's one latent frame
is repeated in front), RoPE on integer rows and columns ("slice" grid); the stock calls are
entry_cogvideox.py's, whose module is loaded the way `load_entries` loads entries."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("refam_contract_entry_cogvideox_shared", Path(__file__).with_name("entry_cogvideox.py"))
_cogvideox = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cogvideox)

ENTRY = _cogvideox.entry("cogvideox_1_5", "1.5", 16)
