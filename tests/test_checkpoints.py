"""Checkpoint layouts, sources (URL cache with sha256 pin, hf-hub, timm tags), offline behaviour and safety."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import cpvt_eval
from cpvt_eval.checkpoints import (
    download_url,
    fetch_hf_hub,
    fetch_pretrained,
    load_checkpoint,
    parse_source,
    url_cache_path,
)
from cpvt_eval.errors import CheckpointError
from tests.conftest import fake_hub_cache


def _model(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cpvt_eval.create_model(name, **kwargs).eval()


def _assert_same_logits(a, b, size=56):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=1e-5)


def _rename(sd, old, new):
    return {k.replace(old, new) if k.startswith(old) else k: v for k, v in sd.items()}


# --- layouts: a checkpoint written in each layout loads and gives the logits of the model it came from ----------


def _layouts():
    def plain(sd):
        return sd

    def algorithm1(sd):  # the paper's Algorithm 1: one PEG named pos_block.pos
        return _rename(sd, "pos_block.0.pos.", "pos_block.pos.")

    def twins_poscnn(sd):  # Twins PosCNN: Sequential(conv) named proj.0
        return _rename(sd, "pos_block.0.pos.", "pos_block.proj.0.")

    def deit_official(sd):  # DeiT's main.py: {"model": ..., "optimizer": ..., "epoch": ...}
        return {"model": sd, "optimizer": {"state": {}}, "epoch": 299, "args": {"lr": 5e-4}}

    def ddp_compiled(sd):  # DDP inside torch.compile
        return {"state_dict": {f"_orig_mod.module.{k}": v for k, v in sd.items()}}

    def ema_only(sd):
        return {"model_ema": {f"module.{k}": v for k, v in sd.items()}}

    def state_dict_ema(sd):
        return {"state_dict_ema": sd, "epoch": 3}

    return [plain, algorithm1, twins_poscnn, deit_official, ddp_compiled, ema_only, state_dict_ema]


@pytest.mark.parametrize("layout", _layouts(), ids=lambda f: f.__name__)
@pytest.mark.parametrize("name", ["cpvt_toy", "cpvt_toy_gap"])
def test_each_single_peg_layout_loads_to_identical_logits(layout, name, tmp_path):
    source = _model(name, seed=1)
    path = tmp_path / "ckpt.pth"
    torch.save(layout(source.state_dict()), path)
    target = _model(name, seed=2)
    report = load_checkpoint(target, path)
    _assert_same_logits(source, target)
    _assert_same_logits(source, target, size=96)
    assert report.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    if layout.__name__ in ("algorithm1", "twins_poscnn"):
        assert {new for _, new in report.renamed} == {"pos_block.0.pos.weight", "pos_block.0.pos.bias"}
    if layout.__name__ == "ddp_compiled":
        assert report.stripped_prefixes == ["_orig_mod.", "module."] and report.nested_under == "state_dict"
    if layout.__name__ in ("ema_only", "state_dict_ema"):
        assert report.ema is True


@pytest.mark.parametrize("style", ["pos", "proj.0"])
def test_several_pegs_as_a_list_load_at_the_positions_of_the_model(style, tmp_path):
    source = _model("cpvt_toy", seed=1, peg_positions="0,2,3", peg_kernel=5)
    assert source.pos_block[1].pos.weight.shape == (64, 1, 5, 5)
    sd = source.state_dict()
    if style == "proj.0":
        sd = {k.replace(".pos.", ".proj.0.") if k.startswith("pos_block.") else k: v for k, v in sd.items()}
    path = tmp_path / "pegs.safetensors"
    save_file(sd, str(path))
    target = _model("cpvt_toy", seed=2, peg_positions="0,2,3", peg_kernel=5)
    load_checkpoint(target, path)
    _assert_same_logits(source, target)


def test_peg_count_mismatch_says_which_model_would_fit(tmp_path):
    path = tmp_path / "plus.pth"
    torch.save(_model("cpvt_toy", peg_positions="0,1,2,3").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"checkpoint has 4 PEG\(s\), the model 1 at blocks 0.*peg_positions"):
        load_checkpoint(_model("cpvt_toy"), path)


def test_ema_choice_is_explicit_and_recorded(tmp_path):
    plain, ema = _model("deit_toy", seed=1), _model("deit_toy", seed=2)
    path = tmp_path / "both.pth"
    torch.save({"model": plain.state_dict(), "model_ema": ema.state_dict()}, path)
    for choice, expected, took_ema in ((None, plain, False), (False, plain, False), (True, ema, True)):
        target = _model("deit_toy", seed=3)
        report = load_checkpoint(target, path, ema=choice)
        _assert_same_logits(expected, target)
        assert report.ema is took_ema and report.to_dict()["ema"] is took_ema
    only_plain = tmp_path / "plain.pth"
    torch.save({"model": plain.state_dict()}, only_plain)
    with pytest.raises(CheckpointError, match="--ema asked for EMA weights but the checkpoint has none"):
        load_checkpoint(_model("deit_toy"), only_plain, ema=True)
    only_ema = tmp_path / "ema.pth"
    torch.save({"state_dict_ema": ema.state_dict()}, only_ema)
    with pytest.raises(CheckpointError, match="no weights found"):
        load_checkpoint(_model("deit_toy"), only_ema, ema=False)


def test_distilled_deit_official_checkpoint_loads(tmp_path):
    kw = dict(embed_dim=64, depth=2, num_heads=2, num_classes=10)
    source = _model("deit_tiny_distilled_patch16_224", seed=1, **kw)
    assert {"dist_token", "head_dist.weight"} <= set(source.state_dict())
    assert source.state_dict()["pos_embed"].shape == (1, 2 + 14 * 14, 64)
    path = tmp_path / "deit_distilled.pth"
    torch.save({"model": source.state_dict(), "epoch": 1}, path)
    target = _model("deit_tiny_distilled_patch16_224", seed=2, **kw)
    load_checkpoint(target, path)
    _assert_same_logits(source, target, size=224)


def test_pos_embed_of_another_grid_is_resampled_and_reported(tmp_path):
    source = _model("deit_toy", seed=1, img_size=96)  # trained at 24x24
    path = tmp_path / "deit96.pth"
    torch.save(source.state_dict(), path)
    target = _model("deit_toy", seed=2)
    report = load_checkpoint(target, path)
    assert report.resampled == ["pos_embed 24x24 -> 14x14"]
    assert "resampled pos_embed 24x24 -> 14x14" in report.summary()


def test_head_with_another_class_count_names_the_count(tmp_path):
    path = tmp_path / "c10.pth"
    torch.save(_model("cpvt_toy", num_classes=10).state_dict(), path)
    with pytest.raises(CheckpointError, match="head has 10 classes, the model expects 1000"):
        load_checkpoint(_model("cpvt_toy", num_classes=1000), path)


def test_keys_dropped_by_request_are_reported_and_must_exist(tmp_path):
    source = _model("cpvt_toy", seed=1)
    sd = dict(source.state_dict())
    sd["blocks.0.total_ops"] = torch.zeros(1)  # profiler counters some training code leaves behind
    sd["blocks.0.total_params"] = torch.zeros(1)
    path = tmp_path / "profiled.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="unexpected 2 key"):
        load_checkpoint(_model("cpvt_toy"), path)
    target = _model("cpvt_toy", seed=2)
    report = load_checkpoint(target, f"{path}#drop=*.total_ops,*.total_params")
    _assert_same_logits(source, target)
    assert sorted(report.dropped) == ["blocks.0.total_ops", "blocks.0.total_params"]
    with pytest.raises(CheckpointError, match="drop=nothing.\\* matches no checkpoint key"):
        load_checkpoint(_model("cpvt_toy"), path, drop=["nothing.*"])


def test_sincos_checkpoint_without_the_fixed_table_loads(tmp_path):
    source = _model("deit_toy_sincos", seed=1)
    sd = {k: v for k, v in source.state_dict().items() if k != "pos_embed"}
    path = tmp_path / "sincos.pth"
    torch.save(sd, path)
    target = _model("deit_toy_sincos", seed=2)
    report = load_checkpoint(target, path)
    _assert_same_logits(source, target)
    assert report.regenerated and "sin-cos" in report.regenerated[0]


# --- safety ---------------------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _model("cpvt_toy").state_dict(), "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refusing .*evil.pth.*could run code"):
        load_checkpoint(_model("cpvt_toy"), path)
    assert not marker.exists()


# --- sources ----------------------------------------------------------------------------------------------------


def test_parse_source_kinds(tmp_path):
    f = tmp_path / "a#b.pth"
    f.write_bytes(b"x")
    assert parse_source(f).kind == "file"  # an existing file wins even with '#' in its name
    pin = "ab" * 32
    s = parse_source(f"https://example.org/w/ckpt.pth#sha256={pin.upper()}&drop=head_dist.*")
    assert (s.kind, s.location, s.sha256, s.drop) == ("url", "https://example.org/w/ckpt.pth", pin, ("head_dist.*",))
    assert parse_source("hf-hub:org/name").location == "org/name"
    assert parse_source("hf-hub:org/name/weights.pth").kind == "hf-hub"
    assert parse_source("deit_tiny_patch16_224.fb_in1k").kind == "timm"
    assert parse_source("timm:twins_svt_small.in1k").location == "twins_svt_small.in1k"
    assert parse_source("missing.pth").kind == "file"
    with pytest.raises(CheckpointError, match="64 hex digits"):
        parse_source("https://example.org/c.pth#sha256=abc")
    with pytest.raises(CheckpointError, match="unknown checkpoint option"):
        parse_source("https://example.org/c.pth#md5=abc")
    with pytest.raises(CheckpointError, match="plain http needs a #sha256"):
        parse_source("http://example.org/c.pth")
    with pytest.raises(CheckpointError, match="hf-hub:org/name"):
        parse_source("hf-hub:justname")


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A local HTTP server on 127.0.0.1 serving a temp dir, in a daemon thread stopped after the test."""
    root = tmp_path / "www"
    root.mkdir()
    _Handler.requests = []
    # HF_HUB_OFFLINE=1 (set for every test) also stops URL downloads; these only reach 127.0.0.1
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("CPVT_EVAL_OFFLINE", raising=False)
    handler = lambda *a, **kw: _Handler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_url_is_downloaded_once_into_the_cache_and_pinned(http_root, tmp_path, monkeypatch):
    root, base = http_root
    source = _model("cpvt_toy", seed=1)
    save_file(source.state_dict(), str(root / "cpvt_toy.safetensors"))
    digest = hashlib.sha256((root / "cpvt_toy.safetensors").read_bytes()).hexdigest()
    url = f"{base}/cpvt_toy.safetensors"

    target = _model("cpvt_toy", seed=2)
    report = load_checkpoint(target, f"{url}#sha256={digest}")
    _assert_same_logits(source, target)
    cached = url_cache_path(url)
    assert Path(report.path) == cached and cached.is_file() and report.sha256 == digest
    assert Path(os.environ["CPVT_EVAL_CACHE"]) in cached.parents  # the user cache dir, not the package
    assert Path(cpvt_eval.__file__).parent not in cached.parents
    assert _Handler.requests == ["/cpvt_toy.safetensors"]

    load_checkpoint(_model("cpvt_toy"), f"{url}#sha256={digest}")  # second time: from the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_checkpoint(_model("cpvt_toy"), url)  # offline: cached files still work
    assert _Handler.requests == ["/cpvt_toy.safetensors"]


def test_wrong_pin_fails_and_leaves_nothing_in_the_cache(http_root):
    root, base = http_root
    (root / "c.pth").write_bytes(b"some bytes")
    url = f"{base}/c.pth"
    with pytest.raises(CheckpointError, match="does not match the pin"):
        download_url(url, "0" * 64)
    assert not url_cache_path(url).exists()
    assert not [p for p in url_cache_path(url).parent.iterdir() if p.name.endswith(".part")]


def test_missing_url_offline_and_unreachable_fail_clearly(http_root, monkeypatch):
    _, base = http_root
    with pytest.raises(CheckpointError, match="HTTP 404"):
        download_url(f"{base}/nothing.pth")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError, match="cannot download"):
        download_url(f"http://127.0.0.1:{port}/c.pth", timeout=2)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    count = len(_Handler.requests)
    with pytest.raises(CheckpointError, match="offline and .* is not in the cache"):
        download_url(f"{base}/new.pth")
    assert len(_Handler.requests) == count  # offline: no request at all


def test_hf_hub_and_timm_tags_use_the_hub_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = _model("cpvt_toy", seed=1)
    ckpt = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(ckpt))
    fake_hub_cache(cache, "someone/cpvt-toy", {"model.safetensors": ckpt.read_bytes()})
    target = _model("cpvt_toy", seed=2)
    report = load_checkpoint(target, "hf-hub:someone/cpvt-toy")
    _assert_same_logits(source, target)
    assert report.source == "hf-hub:someone/cpvt-toy" and "models--someone--cpvt-toy" in report.path
    # a named file, and the pytorch_model.bin fallback
    fake_hub_cache(cache, "someone/other", {"pytorch_model.bin": b"x", "custom.pth": b"y"})
    assert fetch_hf_hub("someone/other").name == "pytorch_model.bin"
    assert fetch_hf_hub("someone/other", "custom.pth").read_bytes() == b"y"
    # timm tags resolve to their hub repo
    fake_hub_cache(cache, "timm/deit_tiny_patch16_224.fb_in1k", {"model.safetensors": b"z"})
    assert fetch_pretrained("deit_tiny_patch16_224.fb_in1k").read_bytes() == b"z"
    with pytest.raises(CheckpointError, match="offline and not in the hub cache.*--checkpoint"):
        fetch_pretrained("deit_small_patch16_224.fb_in1k")
    with pytest.raises(CheckpointError, match="timm has no pretrained weights"):
        fetch_pretrained("deit_small_patch16_224.nothing")


def test_pin_is_checked_for_local_files_too(tmp_path):
    path = tmp_path / "c.pth"
    torch.save(_model("cpvt_toy").state_dict(), path)
    with contextlib.suppress(CheckpointError):
        load_checkpoint(_model("cpvt_toy"), f"{path}#sha256={'1' * 64}")
        pytest.fail("a wrong pin on a local file must fail")
    good = hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_checkpoint(_model("cpvt_toy"), f"{path}#sha256={good}").sha256 == good


def test_cli_takes_a_pinned_url_and_refuses_a_malicious_pickle(http_root, imagefolder, tmp_path):
    from typer.testing import CliRunner

    from cpvt_eval.cli import app

    root, base = http_root
    source = _model("cpvt_toy", seed=1, num_classes=1000)
    save_file(source.state_dict(), str(root / "w.safetensors"))
    digest = hashlib.sha256((root / "w.safetensors").read_bytes()).hexdigest()
    common = ["resolution", "-m", "cpvt_toy", "-s", "56", "--data", str(imagefolder), "--model-arg", "num_classes=1000"]
    common += ["--no-throughput", "--workers", "0"]
    result = CliRunner().invoke(
        app, [*common, "-c", f"{base}/w.safetensors#sha256={digest}", "--out", str(tmp_path / "ok")]
    )
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "ok" / "rows.jsonl").read_text().splitlines()[0])
    assert row["checkpoint"] == f"{base}/w.safetensors#sha256={digest}" and row["checkpoint_sha256"] == digest

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": source.state_dict(), "x": _Payload(marker)}, evil)
    result = CliRunner().invoke(app, [*common, "-c", str(evil), "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2 and not marker.exists()
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "refusing" in lines[0] and "Traceback" not in result.output


def test_no_pe_ablation_loads_and_a_stray_pos_embed_can_be_dropped_by_request(tmp_path):
    source = _model("deit_toy_nope", seed=1)
    assert "pos_embed" not in source.state_dict()
    with_pe = dict(source.state_dict(), pos_embed=torch.zeros(1, 197, 64))  # an APE left in by the training code
    path = tmp_path / "nope.pth"
    torch.save({"model": with_pe}, path)
    with pytest.raises(CheckpointError, match="unexpected 1 key\\(s\\): pos_embed"):
        load_checkpoint(_model("deit_toy_nope"), path)
    target = _model("deit_toy_nope", seed=2)
    report = load_checkpoint(target, path, drop=["pos_embed"])
    assert report.dropped == ["pos_embed"] and "dropped pos_embed" in report.summary()
    _assert_same_logits(source, target)
    _assert_same_logits(source, target, size=96)


def test_twins_checkpoint_in_its_own_layout_loads(tmp_path):
    kw = dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 2, 4], depths=[1, 1, 1, 1], num_classes=10)
    source = _model("twins_svt_small", seed=1, **kw)
    assert "pos_block.0.proj.0.weight" in source.state_dict()
    path = tmp_path / "twins.pth"
    torch.save({"model": source.state_dict()}, path)
    target = _model("twins_svt_small", seed=2, **kw)
    report = load_checkpoint(target, path)
    assert report.renamed == []  # Twins' own PosConv keys are the model's keys
    _assert_same_logits(source, target, size=224)


def test_unreachable_hub_uses_the_cache_or_fails_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from cpvt_eval.checkpoints import hub_unreachable

    with socket.socket() as s:  # a port nobody listens on stands for a machine without network
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert "unreachable" in hub_unreachable()
    with pytest.raises(CheckpointError, match=f"hub 127.0.0.1:{port} unreachable .*not in the hub cache"):
        fetch_hf_hub("someone/absent")
    fake_hub_cache(cache, "someone/present", {"model.safetensors": b"w"})
    assert fetch_hf_hub("someone/present").read_bytes() == b"w"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        assert hub_unreachable() is None
