"""Fixtures every test module may use."""
import shutil

import pytest


@pytest.fixture(scope="module")
def module_dir(request, tmp_path_factory):
    """A folder for one module's shared store, teachers and caches, removed when the module ends.

    A full run writes about 7 GB of checkpoints and caches; kept to the session's end (pytest's default) they
    filled CI's disk. Kept only when a test of the module failed, for looking into.
    """
    failed_before = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)
