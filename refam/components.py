"""What every front door that reads a config shares (`refam test`, `RefAM.load`, and through it
`refam predict`, `analyze` and `serve`): the component modules, imported so that a config may name
a class by its name alone, and the instantiator that lets an error name its config key
(`refam.errors.build`), given to each parser that builds a config (`INSTANTIATORS`), never
registered for every jsonargparse user of the process.
"""

from __future__ import annotations

# Imported so that configs can name components by class name as well as by full import path.
import refam.aggregators.base  # noqa: F401
import refam.aggregators.magnets  # noqa: F401
import refam.aggregators.spatial  # noqa: F401
import refam.data  # noqa: F401
import refam.extractors.flux  # noqa: F401
import refam.extractors.trajectory  # noqa: F401
import refam.segmenters  # noqa: F401
from refam.errors import build

# Every class a refam parser builds goes through `build`, which records on a RefamError the class it
# came from: (instantiator, class, subclasses too), as jsonargparse's `instantiate(instantiators=...)` takes them.
INSTANTIATORS = [(build, object, True)]
