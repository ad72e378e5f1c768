"""Writes the assets of configs/smoke.yaml: a tiny random FLUX folder and a REFER-format fixture.

They are committed under assets/smoke so that `refam test --config configs/smoke.yaml` runs on a
fresh machine offline; this module regenerates them deterministically:

    python -m refam.testing.smoke_assets assets/smoke
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from refam.testing.refer_fixture import write_refer_fixture
from refam.testing.tiny_flux import save_tiny_flux


def write_smoke_assets(root: Path) -> None:
    root = Path(root)
    for sub in ("tiny-flux", "refer"):
        shutil.rmtree(root / sub, ignore_errors=True)
    save_tiny_flux(root / "tiny-flux", seed=0)
    write_refer_fixture(root / "refer", dataset="refcoco", n_images=3, seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    write_smoke_assets(parser.parse_args().root)


if __name__ == "__main__":
    main()
