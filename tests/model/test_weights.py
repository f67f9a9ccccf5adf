"""Strict checkpoint loading: official .pt layouts, our safetensors + JSON, fsspec URLs."""

import ast
import json
from pathlib import Path

import pytest
import torch

from errors import CheckpointError
from model import ZipMap, get_config
from model.weights import load_zipmap, read_state_dict, recognise_variant, save_checkpoint

CFG = get_config("tiny")


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return ZipMap(CFG).eval()


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k].float(), sb[k].float(), rtol=0, atol=0, msg=k)


def test_safetensors_round_trip_with_json_config(tiny, tmp_path):
    url = save_checkpoint(tiny, str(tmp_path / "ckpt" / "tiny.safetensors"))
    assert json.loads((tmp_path / "ckpt" / "tiny.json").read_text())["embed_dim"] == CFG.embed_dim
    loaded = load_zipmap(url)  # config read from the JSON beside the file
    assert loaded.cfg == CFG and not loaded.training
    _same_weights(tiny, loaded)
    x = torch.rand(1, 2, 3, 28, 28)
    torch.testing.assert_close(loaded(x)["depth"], tiny(x)["depth"])


def test_config_from_metadata_when_json_is_missing(tiny, tmp_path):
    url = save_checkpoint(tiny, str(tmp_path / "m.safetensors"))
    (tmp_path / "m.json").unlink()
    assert load_zipmap("file://" + url).cfg == CFG


def test_official_pt_layouts_and_ema(tiny, tmp_path):
    sd = tiny.state_dict()
    ema = {k: v + 1 for k, v in sd.items() if k != "aggregator.camera_token"}  # EMA skips one entry
    torch.save(sd, tmp_path / "bare.pt")
    torch.save({"model": sd, "ema": ema, "epoch": 3}, tmp_path / "wrapped.pt")
    _same_weights(tiny, load_zipmap(str(tmp_path / "bare.pt"), "tiny"))
    _same_weights(tiny, load_zipmap(str(tmp_path / "wrapped.pt"), CFG))
    with_ema = load_zipmap(str(tmp_path / "wrapped.pt"), CFG, use_ema=True).state_dict()
    torch.testing.assert_close(with_ema["depth_head.norm.weight"], sd["depth_head.norm.weight"] + 1)
    torch.testing.assert_close(with_ema["aggregator.camera_token"], sd["aggregator.camera_token"])
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        read_state_dict(str(tmp_path / "bare.pt"), use_ema=True)


def test_float64_load(tiny, tmp_path):
    torch.save(tiny.state_dict(), tmp_path / "w.pt")
    m = load_zipmap(str(tmp_path / "w.pt"), CFG, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.pop("depth_head.norm.bias"), "missing key: 'depth_head.norm.bias'"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(3)), "unexpected key: 'extra.weight'"),
    (lambda sd: sd.__setitem__("aggregator.camera_token", torch.zeros(1, 2, 1, 7)),
     r"'aggregator.camera_token' has shape \(1, 2, 1, 7\), expected \(1, 2, 1, 32\)"),
])
def test_strict_loading_names_the_key(tiny, tmp_path, damage, message):
    sd = dict(tiny.state_dict())
    damage(sd)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as info:
        load_zipmap(str(tmp_path / "bad.pt"), CFG)
    assert str(tmp_path / "bad.pt") in str(info.value)
    assert isinstance(info.value, KeyError)  # callers may catch the builtin


def test_wrong_variant_is_rejected(tmp_path):
    torch.manual_seed(0)
    torch.save(ZipMap(get_config("tiny_streaming")).state_dict(), tmp_path / "stream.pt")
    with pytest.raises(CheckpointError, match="camera_mlp_head"):
        load_zipmap(str(tmp_path / "stream.pt"), "tiny")


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable PyTorch checkpoint"):
        load_zipmap(str(tmp_path / "junk.pt"), CFG)
    with pytest.raises(CheckpointError, match="not found"):
        load_zipmap(str(tmp_path / "absent.pt"), CFG)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "raw.safetensors"))  # no JSON, no metadata
    with pytest.raises(CheckpointError, match="raw.safetensors: matches no ZipMap variant; closest is .*1 extra key"):
        load_zipmap(str(tmp_path / "raw.safetensors"))


# --- which variant a checkpoint is, from its tensors -------------------------------------------------
KEYS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "keys"


def _published(case):
    """A state dict with the published names and shapes (meta tensors: no memory)."""
    rows = (line.split("\t") for line in (KEYS / f"{case}.txt").read_text().splitlines() if line.strip())
    return {name: torch.empty(ast.literal_eval(shape), device="meta") for name, shape in rows}


@pytest.mark.parametrize("case, file", [("main", "checkpoint_aff_inv.pt"), ("ref_view", "checkpoint_with_ref_view.pt"),
                                        ("streaming", "checkpoint_online.pt"),
                                        ("state_query", "checkpoint_state_query.pt")])
def test_published_checkpoints_are_recognised(case, file):
    assert recognise_variant(_published(case), f"s3://models/zipmap/{file}") == case
    if case in ("main", "ref_view"):  # identical keys and shapes: only the published file name tells them apart
        with pytest.raises(CheckpointError, match=r"my-weights.pt: the weights fit presets main, ref_view equally; "
                                                  r"pass --preset"):
            recognise_variant(_published(case), "/models/my-weights.pt")
    else:  # unique keys: any file name
        assert recognise_variant(_published(case), "/models/my-weights.pt") == case


def test_recognised_pt_loads_without_a_preset(tmp_path):
    torch.manual_seed(0)
    model = ZipMap(get_config("tiny_streaming"))
    torch.save(model.state_dict(), tmp_path / "online.pt")
    loaded = load_zipmap(str(tmp_path / "online.pt"))
    assert loaded.variant == "tiny_streaming" and loaded.cfg == get_config("tiny_streaming")
    _same_weights(model, loaded)
    torch.save(ZipMap(CFG).state_dict(), tmp_path / "checkpoint_aff_inv.pt")  # tiny vs tiny_ref_view: undecided
    with pytest.raises(CheckpointError, match="pass --preset"):
        load_zipmap(str(tmp_path / "checkpoint_aff_inv.pt"))
    assert load_zipmap(str(tmp_path / "checkpoint_aff_inv.pt"), "tiny_ref_view").variant == "tiny_ref_view"


def test_checkpoint_missing_a_head_fails_in_one_line_naming_the_keys(tmp_path, capsys):
    from cli import main

    torch.manual_seed(0)
    sd = {k: v for k, v in ZipMap(get_config("small")).state_dict().items() if not k.startswith("depth_head.")}
    torch.save(sd, tmp_path / "no_depth.pt")
    with pytest.raises(CheckpointError, match=r"no_depth.pt: matches no ZipMap variant; closest is 'small': "
                                              r"\d+ missing keys \(depth_head\."):
        load_zipmap(str(tmp_path / "no_depth.pt"))
    from model.synthetic import write_collection

    src = write_collection(str(tmp_path / "street"), 5, "street", 2, 28, 42)
    assert main(["reconstruct", src, str(tmp_path / "out"), "--weights", str(tmp_path / "no_depth.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "depth_head." in err[-1] and "missing key" in err[-1]
    assert not (tmp_path / "out").exists()


def test_load_from_s3(tiny, s3_bucket, tmp_path, monkeypatch):
    bucket, opts = s3_bucket
    monkeypatch.setenv("ZIPMAP_CACHE", str(tmp_path / "cache"))
    url = save_checkpoint(tiny, f"s3://{bucket}/models/tiny.safetensors", storage_options=opts)
    loaded = load_zipmap(url, storage_options=opts)
    _same_weights(tiny, loaded)
    # an official-style .pt on S3 goes through the same local cache
    import fsspec

    with fsspec.open(f"s3://{bucket}/official/ckpt.pt", "wb", **opts) as f:
        torch.save({"model": tiny.state_dict()}, f)
    _same_weights(tiny, load_zipmap(f"s3://{bucket}/official/ckpt.pt", CFG, storage_options=opts))
    cached = list((tmp_path / "cache" / "checkpoints").rglob("ckpt.pt"))
    assert len(cached) == 1
    with pytest.raises(CheckpointError, match="not found"):
        load_zipmap(f"s3://{bucket}/official/absent.pt", CFG, storage_options=opts)


def test_load_over_https_url(tiny, tmp_path, monkeypatch):
    """An http(s) URL goes through fsspec's HTTP filesystem (a local server on 127.0.0.1 here)."""
    import functools
    import http.server
    import threading

    served = tmp_path / "www"
    served.mkdir()
    torch.save({"model": tiny.state_dict()}, served / "checkpoint.pt")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("ZIPMAP_CACHE", str(tmp_path / "cache"))
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/checkpoint.pt"
        _same_weights(tiny, load_zipmap(url, CFG))
        with pytest.raises(CheckpointError, match="absent.pt"):
            load_zipmap(url.replace("checkpoint.pt", "absent.pt"), CFG)
    finally:
        server.shutdown()
        server.server_close()
