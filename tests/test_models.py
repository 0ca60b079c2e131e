"""Bundled models are found offline; the GGUF is converted once into a verified cache."""

import os

from backends.models import _cache_is_valid, bundled_embedding_path, bundled_gguf_path, prepare_llm


def test_bundled_models_are_found_without_importing_their_packages():
    assert bundled_gguf_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (bundled_embedding_path() / "model.safetensors").is_file()


def test_conversion_is_cached_and_verified(settings, duet):
    duet.llm  # loading converts once, if the cache did not exist yet
    folder = prepare_llm(settings)
    marker = os.path.join(folder, "duet-converted.json")
    before = os.stat(marker).st_mtime_ns
    assert prepare_llm(settings) == folder
    assert os.stat(marker).st_mtime_ns == before  # not converted again


def test_a_damaged_cache_is_detected(tmp_path, settings):
    import json
    import shutil

    folder = prepare_llm(settings)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    sha = json.loads((copy / "duet-converted.json").read_text())["gguf_sha256"]
    assert _cache_is_valid(copy, sha)
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    assert not _cache_is_valid(copy, sha)
