"""`refam serve`: see and correct a referring segmentation in the browser.

    refam serve                                   # the embedded refam-shapes pipeline
    refam serve --config configs/refcoco.yaml     # FLUX.1-dev + SAM2, or any config's model section
    refam serve --config run.json                 # a run downloaded from the app: its settings, input,
                                                  # expressions and caption (the input saved beside run.json)

A Gradio app on `refam predict`'s inference path (`RefAM.segment`, `refam.apps.predict.write_prediction`):
upload an image (or click a demo scene), type one expression per line and an optional caption, and
see a card per expression: the mask outlined over the image with the point, and the heatmap over the
image; a click on one of its tokens (kept, dropped and sink tokens marked, each with the text-to-text
attention it receives) shows that token's map instead, on one colour scale for the expression; a
click on the mask adds a point (shift: "not this") and re-prompts the segmenter with all of them,
undo takes the last back. Above: the loaded model's card, and each expression's warnings. The
settings a researcher flips (magnets, stop-word filter, GAS handling, block range, noise level,
spatial bias) rerun at once and rebuild only the light components: the weights are loaded once. The
settings of the shown result stand next to it, and a pinned result shows beside the next one of the
same input. A video (an animated GIF too) plays in the page and gives the key frame's maps and the
tracked masks as a playable clip. The masks, a copy of the input and a JSON of the run (its `model:`
section with the settings applied, points and tokens) are offered for download; the JSON loads back
as a config, and as `--config` it also restores the input (the download's copy, saved beside it),
the expressions and the caption. Requests are queued: one runs at a time on the model.
"""
# The package: `settings` (the page's settings, the model section they make and the light components
# built from it), `session` (runs, folders, records), `clips` (which uploads are videos, the clips the
# page plays), `restore` (a downloaded run as the config), `page` (the Gradio app and its handlers),
# `views` (what a browser's page shows: the shown and the pinned result), `cards` and `pictures` (a
# result card and its picture's layers), `messages` (errors in the page's words), `client` (its CSS
# and script).

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from refam.apps.serve.page import (CONTROLS, DEMO_MANIFEST, OUTPUTS, build_app, page_pin, page_preview, page_rerun,
                                   page_run, page_unpin)
from refam.apps.serve.restore import RestoredRun, restored_run
from refam.apps.serve.session import NO_IMAGE, Run, Session
from refam.apps.serve.settings import ENTRY_KEYS, Settings
from refam.apps.serve.views import View
from refam.errors import ArgumentParser, ConfigError, number, reports_user_errors
from refam.io.images import max_pixels
from refam.sections import model_section

__all__ = ["CONTROLS", "ENTRY_KEYS", "NO_IMAGE", "OUTPUTS", "RestoredRun", "Run", "Session", "Settings", "View",
           "build_app", "main", "page_pin", "page_preview", "page_rerun", "page_run", "page_unpin", "restored_run"]


def check_port(host: str, port: int) -> None:
    """The address can be listened on: refused now, in one line, rather than after the model loads."""
    import socket

    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {host}: not an address ({getattr(err, 'strerror', None) or err}); "
                          "give this machine's name or address, e.g. 127.0.0.1 or 0.0.0.0") from err
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: a closed run's port is free
        try:
            probe.bind(address)
        except OSError as err:
            raise ConfigError(f"cannot serve on {host}:{port}: {err.strerror or err}; "
                              "choose another --port (or --host)") from err


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    from refam.api import add_model_arguments

    parser = ArgumentParser(prog="refam serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=number(int, at_least=1, at_most=65535), default=7860)
    parser.add_argument("--max-frames", type=number(int, at_least=1), default=150,
                        help="longest video the app takes, in frames")
    add_model_arguments(parser)
    args = parser.parse_args(argv)
    if importlib.util.find_spec("gradio") is None:  # an extra; checked before the model loads
        raise ConfigError("refam serve needs gradio: pip install 'refam[serve]'")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry, no version check
    check_port(args.host, args.port)
    max_pixels()  # an invalid REFAM_MAX_PIXELS is the server's to fix: refused now, not on a page user's upload
    restored = restored_run(args.config)  # a downloaded run's inputs; a malformed one is refused before loading
    from refam.api import RefAM

    source = args.config or args.model
    model = RefAM.load(source, device=args.device)
    section = model_section(source)
    workdir = Path(tempfile.mkdtemp(prefix="refam-serve-"))
    app = None
    try:  # the working folder goes on every way out: a failed start, Ctrl+C, a stop by kill
        session = Session(model, section, max_frames=args.max_frames, workdir=workdir, restored=restored)
        app = build_app(session)
        allowed = [str(DEMO_MANIFEST.parent)] if DEMO_MANIFEST.exists() else []
        try:
            app.launch(server_name=args.host, server_port=args.port, share=False, quiet=True,
                       prevent_thread_lock=True, show_error=False, ssr_mode=False, allowed_paths=allowed,
                       footer_links=["api"])
        except OSError as err:  # taken since the check above
            raise ConfigError(f"cannot serve on {args.host}:{args.port}: {err}; choose another --port or --host") from err
        print(f"refam serve: {app.local_url} (Ctrl+C stops)", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a stop by kill also cleans up below
        try:
            app.block_thread()
        except KeyboardInterrupt:
            pass
    finally:
        try:
            if app is not None:
                app.close()
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
