"""Pretrained backbone weights through the Hugging Face hub cache (core/weights.py), offline.

A local hub cache, laid out as huggingface_hub lays it out (``models--<org>--<name>`` with
``blobs/``, ``refs/main`` and ``snapshots/<commit>/<file>``), holds seeded random weights
under the name open_clip's ``ViT-B-16`` / ``openai`` tag resolves to; the tower is then
built through open_clip's own loading code with no network at all. Downloads are exercised
with fake hub functions.
"""
import hashlib
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from mamol.core import backbone as bb
from mamol.core import torch_compat, weights
from mamol.core.errors import MamolInputError

ARCH, TAG = "ViT-B-16", "openai"
REPO_ID = "timm/vit_base_patch16_clip_224.openai"    # open_clip 3.3's hf_hub for the tag
COMMIT = "3c1f5b2a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a"  # any 40 hex digits
SEED = 20240515


def put_in_cache(cache: Path, filename: str, source: Path, repo_id: str = REPO_ID) -> Path:
    """Place ``source`` in the hub cache ``cache`` as huggingface_hub would: the content in
    ``blobs/<sha256>``, ``refs/main`` naming the commit, the snapshot file a relative link
    to the blob. Returns the snapshot path."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha256(Path(source).read_bytes()).hexdigest()
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "blobs" / digest)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    snapshot = folder / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    os.symlink(os.path.join("..", "..", "blobs", digest), snapshot / filename)
    return snapshot / filename


def save_full_clip(arch: str, path: Path, seed: int):
    """A seeded random open_clip ``arch`` (text tower too: open_clip loads strictly) saved in
    fp16 as safetensors; returns the saved tensors."""
    open_clip = torch_compat.import_open_clip()
    torch = torch_compat.import_torch()
    from safetensors.torch import save_file
    with torch.random.fork_rng(devices=[]), bb._quiet_open_clip():
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
    state = {name: tensor.detach().half().contiguous()
             for name, tensor in model.state_dict().items()}
    del model
    save_file(state, str(path))
    return state


@pytest.fixture
def no_network(monkeypatch):
    """Every connection attempt is recorded and fails at once."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "weights cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture(scope="module")
def seeded_cache(tmp_path_factory):
    """A hub cache holding seeded ViT-B-16 weights as open_clip_model.safetensors."""
    root = tmp_path_factory.mktemp("hub")
    source = root / "seeded.safetensors"
    state = save_full_clip(ARCH, source, SEED)
    cache = root / "cache"
    path = put_in_cache(cache, weights.HF_SAFE_WEIGHTS_NAME, source)
    source.unlink()
    visual = {name[len("visual."):]: tensor for name, tensor in state.items()
              if name.startswith("visual.")}
    return cache, path, visual


# ---------------------------------------------------------------------------- the cache

def test_weights_cache_dir_precedence(monkeypatch, tmp_path):
    for name in (weights.CACHE_ENV, "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME",
                 "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert weights.weights_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.weights_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert weights.weights_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights.weights_cache_dir() == tmp_path / "hub"
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "mamol"))
    assert weights.weights_cache_dir() == tmp_path / "mamol"
    assert bb.weights_cache_dir is weights.weights_cache_dir


def test_tag_resolves_as_open_clip_does():
    open_clip = torch_compat.import_open_clip()
    config = weights.pretrained_config(open_clip, ARCH, TAG)
    location = weights.hub_file(config["hf_hub"])
    assert location.repo_id == REPO_ID
    assert location.filenames == ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    from open_clip import constants
    assert (constants.HF_SAFE_WEIGHTS_NAME, constants.HF_WEIGHTS_NAME) == location.filenames
    assert weights.hub_file("org/repo/weights.bin").filenames == ("weights.safetensors",
                                                                  "weights.bin")
    with pytest.raises(MamolInputError, match="no pretrained weights 'nonsense'.*openai"):
        weights.pretrained_config(open_clip, ARCH, "nonsense")


def test_fake_cache_layout_is_huggingface_hubs(tmp_path):
    """The test cache is one huggingface_hub (and so open_clip) finds offline."""
    source = tmp_path / "file"
    source.write_bytes(b"weights")
    cache = tmp_path / "cache"
    path = put_in_cache(cache, weights.HF_SAFE_WEIGHTS_NAME, source)
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    assert try_to_load_from_cache(REPO_ID, weights.HF_SAFE_WEIGHTS_NAME,
                                  cache_dir=cache) == str(path)
    assert hf_hub_download(REPO_ID, weights.HF_SAFE_WEIGHTS_NAME, cache_dir=cache,
                           local_files_only=True) == str(path)
    location = weights.HubFile(REPO_ID, ("absent.safetensors", weights.HF_SAFE_WEIGHTS_NAME))
    assert weights.cached_file(location, cache) == path
    assert weights.cached_file(weights.HubFile(REPO_ID, ("absent.bin",)), cache) is None


# ------------------------------------------------------------ loading through open_clip

@pytest.mark.slow
def test_pretrained_tag_loads_cached_weights_without_network(seeded_cache, monkeypatch,
                                                             no_network):
    cache, path, expected = seeded_cache
    torch = torch_compat.import_torch()
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)   # cached: no network even online
    lines = []
    spec = bb.BackboneSpec(arch=ARCH, source=bb.WeightsSource.PRETRAINED, pretrained_tag=TAG)
    visual = bb.build_visual_tower(spec, log=lines.append)
    assert no_network == []
    assert lines == [f"Using the cached {ARCH} '{TAG}' weights {path}"]
    state = visual.state_dict()
    assert sorted(state) == sorted(expected)
    for name, tensor in expected.items():
        assert state[name].dtype == torch.float32
        assert torch.equal(state[name], tensor.float()), name
    # the tag was trained with QuickGELU; open_clip's config would give plain GELU
    assert type(visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    # the fingerprint is the one of those tensors, whichever way the file is given
    digest = hashlib.sha256()
    bb.hash_tensors(digest, {name: tensor.float() for name, tensor in expected.items()})
    assert bb.fingerprint(visual) == digest.hexdigest()[:16]
    from_file = bb.build_visual_tower(bb.BackboneSpec(
        arch=ARCH, source=bb.WeightsSource.CHECKPOINT, checkpoint_path=str(path)))
    assert bb.fingerprint(from_file) == bb.fingerprint(visual)


def test_corrupt_cached_file_names_it(offline_cache):
    source = offline_cache.parent / "garbage"
    source.write_bytes(b"this is no checkpoint\n" * 64)
    # only the .bin is cached: the second name open_clip tries
    path = put_in_cache(offline_cache, weights.HF_WEIGHTS_NAME, source)
    spec = bb.BackboneSpec(arch=ARCH, source=bb.WeightsSource.PRETRAINED, pretrained_tag=TAG)
    with pytest.raises(MamolInputError) as caught:
        bb.build_visual_tower(spec)
    message = str(caught.value)
    assert f"'{path}'" in message and "cannot be loaded" in message
    assert str(weights.HubFile(REPO_ID, ()).repo_folder(offline_cache)) in message
    assert "\n" not in message


def test_wrong_shape_cached_file_names_it(offline_cache):
    source = offline_cache.parent / "tiny.safetensors"
    bb._register_configs(torch_compat.import_open_clip())
    save_full_clip(bb.TINY_ARCH, source, SEED)
    path = put_in_cache(offline_cache, weights.HF_SAFE_WEIGHTS_NAME, source)
    spec = bb.BackboneSpec(arch=ARCH, source=bb.WeightsSource.PRETRAINED, pretrained_tag=TAG)
    with pytest.raises(MamolInputError) as caught:
        bb.build_visual_tower(spec)
    message = str(caught.value)
    # open_clip stops at the text tower's positional embedding ("width changed")
    assert f"'{path}'" in message and "cannot be loaded (" in message
    assert "damaged or holds weights of another architecture" in message
    assert "\n" not in message


def test_truncated_cached_file_names_it(offline_cache):
    source = offline_cache.parent / "tiny.safetensors"
    bb._register_configs(torch_compat.import_open_clip())
    save_full_clip(bb.TINY_ARCH, source, SEED)
    data = source.read_bytes()
    source.write_bytes(data[:len(data) // 2])
    path = put_in_cache(offline_cache, weights.HF_SAFE_WEIGHTS_NAME, source)
    spec = bb.BackboneSpec(arch=ARCH, source=bb.WeightsSource.PRETRAINED, pretrained_tag=TAG)
    with pytest.raises(MamolInputError, match="cannot be loaded") as caught:
        bb.build_visual_tower(spec)
    assert f"'{path}'" in str(caught.value)


# --------------------------------------------------------------------------- offline

def test_not_cached_and_offline_says_what_to_do(offline_cache, no_network):
    spec = bb.BackboneSpec(arch=ARCH, source=bb.WeightsSource.PRETRAINED, pretrained_tag=TAG)
    with pytest.raises(MamolInputError) as caught:
        bb.build_visual_tower(spec)
    message = str(caught.value)
    assert no_network == []
    assert f"not in the weights cache '{offline_cache}'" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert "internet access" in message and weights.CACHE_ENV in message
    assert "checkpoint file" in message
    assert "\n" not in message


def test_not_cached_and_no_network_says_what_to_do(offline_cache, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    open_clip = torch_compat.import_open_clip()
    started = time.monotonic()
    with pytest.raises(MamolInputError) as caught:
        weights.fetch_pretrained(open_clip, ARCH, TAG, log=lambda line: None)
    assert time.monotonic() - started < 60
    message = str(caught.value)
    assert no_network, "the hub was not asked"
    assert f"not in the weights cache '{offline_cache}'" in message
    assert "cannot be downloaded" in message and "internet access" in message
    assert "\n" not in message


# -------------------------------------------------------------------------- progress

def test_progress_lines_every_five_percent():
    lines = []
    label = "Downloading ViT-B-16 'openai' weights from the Hugging Face hub"
    progress = weights.DownloadProgress(label, 351_600_000, lines.append)
    progress.update(128_400_000)
    assert lines == [f"{label}: 36 % (128.4 of 351.6 MB)"]
    for done in range(128_400_000, 351_600_001, 1_000_000):
        progress.update(done)
    progress.finish()
    percents = [int(line.split(": ")[1].split(" %")[0]) for line in lines]
    assert percents[-1] == 100 and lines[-1].endswith("(351.6 of 351.6 MB)")
    assert all(later - earlier >= 5 for earlier, later in zip(percents[:-2], percents[1:-1]))
    assert len(lines) == 14     # 36, 41, …, 96 and the end
    unknown = []
    progress = weights.DownloadProgress("D", None, unknown.append)
    for done in range(0, 120_000_001, 1_000_000):
        progress.update(done)
    progress.finish(120_000_000)
    assert unknown == ["D: 50.0 MB", "D: 100.0 MB", "D: 100 % (120.0 of 120.0 MB)"]


def test_run_with_progress_polls_the_growing_blob(tmp_path):
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    total = 1_000_000

    def fake_download():
        incomplete = blobs / "0abc.1234abcd.incomplete"
        with open(incomplete, "wb") as out:
            for _ in range(20):
                out.write(b"\0" * (total // 20))
                out.flush()
                time.sleep(0.02)
        final = blobs / "0abc"
        incomplete.rename(final)
        return str(final)

    lines = []
    path = weights.run_with_progress(fake_download, lambda: weights.largest_incomplete(blobs),
                                     weights.DownloadProgress("D", total, lines.append),
                                     interval=0.005)
    assert path == str(blobs / "0abc")
    assert len(lines) >= 3, lines                 # some progress, then the end
    assert lines[-1] == "D: 100 % (1.0 of 1.0 MB)"
    percents = [int(line.split(": ")[1].split(" %")[0]) for line in lines]
    assert percents == sorted(percents) and percents[0] < 100

    def failing():
        raise ConnectionError("gone")
    with pytest.raises(ConnectionError, match="gone"):
        weights.run_with_progress(failing, lambda: None,
                                  weights.DownloadProgress("D", 1, lines.append), 0.005)


def test_download_goes_through_the_hub_once_then_the_cache(tmp_path, monkeypatch, no_network):
    """The first fetch asks the hub (the .safetensors is missing there, so the .bin), with
    progress lines; the second finds the file in the cache and asks nothing."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    size = 3_000_000
    asked = []

    class Meta:
        def __init__(self, size):
            self.size = size

    def fake_metadata(url, *args, **kwargs):
        asked.append(url)
        if url.endswith(weights.HF_SAFE_WEIGHTS_NAME):
            raise EntryNotFoundError("404")
        return Meta(size)

    def fake_download(repo_id, filename, *, cache_dir, **kwargs):
        assert (repo_id, filename, Path(cache_dir)) == (REPO_ID, weights.HF_WEIGHTS_NAME, cache)
        assert kwargs.get("library_name") == "open_clip"
        blobs = Path(cache_dir) / ("models--" + repo_id.replace("/", "--")) / "blobs"
        blobs.mkdir(parents=True)
        with open(blobs / "e7a9.incomplete", "wb") as out:
            for _ in range(10):
                out.write(b"\1" * (size // 10))
                out.flush()
                time.sleep(0.03)
        path = put_in_cache(Path(cache_dir), filename, blobs / "e7a9.incomplete")
        (blobs / "e7a9.incomplete").unlink()
        return str(path)

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", fake_metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    open_clip = torch_compat.import_open_clip()
    lines = []
    path, config = weights.fetch_pretrained(open_clip, ARCH, TAG, log=lines.append)
    assert config["quick_gelu"] is True
    assert [url.rsplit("/", 1)[1] for url in asked] == [weights.HF_SAFE_WEIGHTS_NAME,
                                                         weights.HF_WEIGHTS_NAME]
    label = f"Downloading {ARCH} '{TAG}' weights from the Hugging Face hub"
    assert lines[0] == f"{label}: {REPO_ID}/{weights.HF_WEIGHTS_NAME}, 3.0 MB, into {cache}"
    assert lines[-1] == f"{label}: 100 % (3.0 of 3.0 MB)"
    assert path.name == weights.HF_WEIGHTS_NAME and path.stat().st_size == size
    assert no_network == []
    asked.clear()
    again, _ = weights.fetch_pretrained(open_clip, ARCH, TAG, log=lines.append)
    assert again == path and asked == []
    assert lines[-1] == f"Using the cached {ARCH} '{TAG}' weights {path}"
