"""Bundled models are found offline; the GGUF is converted once into a verified cache."""

import pytest
import os

from backends.models.files import cache_is_valid, bundled_embedding_path, bundled_gguf_path, prepare_llm


@pytest.mark.fast
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
    assert cache_is_valid(copy, sha)
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)
    assert not cache_is_valid(copy, sha)


def test_bundled_embeddings_equal_sentence_transformers():
    """The direct mean-pooling embedder gives sentence-transformers' vectors (the store was built with those)."""
    import numpy as np
    from langchain_huggingface import HuggingFaceEmbeddings

    from backends.knowledge.embeddings import MeanPoolingEmbeddings, is_mean_pooling_folder

    folder = bundled_embedding_path()
    assert is_mean_pooling_folder(folder)
    texts = ["How many days of annual leave?", "Der Zug fährt um 7 Uhr ab.", "x", "word " * 400]  # the last is truncated
    ours = np.array(MeanPoolingEmbeddings(folder, "cpu").embed_documents(texts))
    reference = HuggingFaceEmbeddings(model_name=str(folder), model_kwargs={"device": "cpu", "local_files_only": True},
                                      encode_kwargs={"normalize_embeddings": True})
    assert np.abs(ours - np.array(reference.embed_documents(texts))).max() < 1e-5


@pytest.mark.fast
def test_the_base_models_hash_follows_its_file_without_reading_it_again(tmp_path):
    """Adapters are checked against it at every answer: hashed once per version of the file, not per answer."""
    import hashlib

    from backends.core.config import load_settings
    from backends.models.files import _sha256_of_version, base_model_identity

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"first version")
    settings = load_settings(llm=str(gguf))
    assert base_model_identity(settings)["sha256"] == hashlib.sha256(b"first version").hexdigest()
    reads = _sha256_of_version.cache_info().misses
    assert base_model_identity(settings)["sha256"] == hashlib.sha256(b"first version").hexdigest()
    assert _sha256_of_version.cache_info().misses == reads  # not read again
    gguf.write_bytes(b"second version, retrained elsewhere")
    assert base_model_identity(settings)["sha256"] == hashlib.sha256(b"second version, retrained elsewhere").hexdigest()


def test_embeddings_asked_while_a_batch_computes_go_together_and_equal_their_own():
    """Other sessions' queries and claims wait for the batch in progress, then go in one model call; each caller gets
    its own vectors (as alone, to rounding), and a failure reaches every caller of its batch."""
    import threading

    import numpy as np

    from backends.knowledge.embeddings import FreshThreadEmbeddings, MeanPoolingEmbeddings

    class Counted(MeanPoolingEmbeddings):
        calls: list[int] = []

        def embed_documents(self, texts):
            self.calls.append(len(texts))
            if "fail" in texts:
                raise RuntimeError("the model failed")
            return super().embed_documents(texts)

    model = Counted(bundled_embedding_path(), "cpu")
    embeddings = FreshThreadEmbeddings(model)
    texts = ["How many days of annual leave?", "Where is berth 12?", "Der Zug fährt um 7 Uhr ab.", "x"]
    alone = [embeddings.embed_query(t) for t in texts]
    model.calls.clear()
    results: dict = {}

    def ask(n):
        try:
            results[n] = embeddings.embed_query(texts[n]) if n < len(texts) else embeddings.embed_documents(["fail"])
        except RuntimeError as error:
            results[n] = error

    with embeddings.computing:  # a batch in progress: every call below queues behind it
        threads = [threading.Thread(target=ask, args=(n,)) for n in range(len(texts))]
        for thread in threads:
            thread.start()
        while len(embeddings.queue) < len(texts):
            threads[0].join(0.001)
    for thread in threads:
        thread.join(60)
    assert model.calls == [len(texts)], "one model call for the four callers"
    for n in range(len(texts)):
        assert np.abs(np.array(results[n]) - np.array(alone[n])).max() < 1e-5

    with embeddings.computing:
        threads = [threading.Thread(target=ask, args=(n,)) for n in (0, len(texts))]
        for thread in threads:
            thread.start()
        while len(embeddings.queue) < 2:
            threads[0].join(0.001)
    for thread in threads:
        thread.join(60)
    assert all(isinstance(results[n], RuntimeError) for n in (0, len(texts)))
