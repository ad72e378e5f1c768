"""FLUX.2 [klein] under the contract: `Flux2KleinPipeline` (Qwen3 prompts, right-padded, no guidance);
the stock calls are entry_flux2.py's, whose module is loaded the way `load_entries` loads entries."""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("refam_contract_entry_flux2_shared", Path(__file__).with_name("entry_flux2.py"))
_flux2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_flux2)

ENTRY = _flux2.entry("klein")
