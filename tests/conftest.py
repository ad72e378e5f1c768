import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refam.testing.tiny_flux import save_tiny_flux

ROOT = Path(__file__).resolve().parents[1]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (pyproject's addopts): the whole suite (`make test`, plain `pytest`, `-m ...`)
    runs on one pytest-xdist worker per CPU, each test file on one worker (`--dist loadfile`, so
    a module's shared fixture runs once); a run of chosen files or of `-k` runs in this process
    as before (so does `-n 0`). PYTEST_XDIST_AUTO_NUM_WORKERS sets the number, as in pytest-xdist."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS and not config.option.keyword
    cpus = len(os.sched_getaffinity(0))
    return cpus if whole_suite and cpus > 1 else 0


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    workers = getattr(config.option, "numprocesses", None)
    if isinstance(workers, int) and workers > 1:
        # the workers share the CPUs: torch's default of one thread per CPU in each would oversubscribe
        # them (the processes the tests start, DDP ranks included, inherit this too)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Workers take whole files in collection order (--no-loadscope-reorder): files with
        # end-to-end (slow) tests go first, so that no long file starts last while the other
        # workers have nothing left. The order within a file is kept.
        slow_files = {item.path for item in items if item.get_closest_marker("slow")}
        items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory) -> Path:
    return save_tiny_flux(tmp_path_factory.mktemp("tiny-flux") / "flux")


@pytest.fixture(scope="session")
def tiny_extractor(tiny_flux_dir):
    from refam.extractors.flux import FluxExtractor

    extractor = FluxExtractor(str(tiny_flux_dir), torch_dtype="float32", resolution=128, caption_max_tokens=16)
    extractor.setup(torch.device("cpu"))
    return extractor


@pytest.fixture
def refam_here(capfd, monkeypatch):
    """`refam ARGS` run in this process through the console script's `main`, for tests of what a
    command prints and writes where a separate process is not what is tested: a new process
    spends about 12 CPU seconds importing torch and Lightning before it reads its first argument.
    Each front door keeps at least one test that runs the real console script.

    Returns what `subprocess.run(..., capture_output=True, text=True)` would: the exit code and
    everything written to stdout and stderr. Logging reaches stderr as in a fresh process: the
    console handlers that libraries (Lightning) made at import write to this test's stderr, not
    to the stream of the test that imported them, and warnings of loggers without a handler are
    printed (there by Python's last-resort handler; here pytest's handlers on the root logger
    would take them)."""
    from refam.cli import main

    def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        consoles = [h for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
                    for h in getattr(logger, "handlers", []) if type(h) is logging.StreamHandler]
        streams = [h.stream for h in consoles]
        for handler in consoles:  # not setStream: it flushes the old stream, which may be closed
            handler.stream = sys.stderr
        last_resort = logging.StreamHandler(sys.stderr)
        last_resort.setLevel(logging.WARNING)
        logging.getLogger().addHandler(last_resort)
        capfd.readouterr()
        code = 0
        try:
            main(list(args))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
            if isinstance(exit.code, str):  # sys.exit("message") prints it, as the interpreter would
                print(exit.code, file=sys.stderr)
        finally:
            logging.getLogger().removeHandler(last_resort)
            for handler, stream in zip(consoles, streams):
                handler.stream = stream
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["refam", *args], code, out, err)

    return run


@pytest.fixture(scope="session")
def bench_script():
    """Loads `bench/<name>.py` as a module (the benches are scripts beside the package, not in it)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module

    return load
