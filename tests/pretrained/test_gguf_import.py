"""GGUF import round trip: a GGUF written here becomes a plain HF directory that loads without ``gguf``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

pytest.importorskip("gguf")

from conftest import CHAT_TEMPLATE  # noqa: E402
from knexa_cli.node import app  # noqa: E402

from knexa_node.learn.gguf_import import IMPORT_RECORD, GGUFImportError, import_gguf  # noqa: E402

PROMPT = "def add(a, b):\n    \"\"\"Return a plus b.\"\"\"\n"

# Runs in a fresh interpreter where importing gguf fails: the directory must not need it.
_LOAD_WITHOUT_GGUF = """
import sys
sys.modules["gguf"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
directory, prompt, out = sys.argv[1], sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(directory)
model = AutoModelForCausalLM.from_pretrained(directory).eval()
ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
with torch.no_grad():
    torch.save({"ids": ids, "logits": model(ids).logits, "template": tokenizer.chat_template}, out)
"""


@pytest.fixture(scope="module")
def imported(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "model"
    report = import_gguf(tiny_gguf, out)
    assert report.model_type == "llama" and report.chat_template and report.parameters > 0
    return out


@pytest.mark.slow
def test_round_trip_logits_equal_and_no_gguf_needed(tiny_gguf: Path, imported: Path, tmp_path: Path) -> None:
    config = json.loads((imported / "config.json").read_text())
    assert "quantization_config" not in config
    assert not list(imported.glob("*.gguf"))
    record = json.loads((imported / IMPORT_RECORD).read_text())
    assert record["source"] == "tiny.gguf" and len(record["source_sha256"]) == 64

    out = tmp_path / "logits.pt"
    subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_GGUF, str(imported), PROMPT, str(out)], check=True,
                   timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    loaded = torch.load(out)

    tokenizer = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    reference = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name,
                                                     dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, loaded["ids"])
    with torch.no_grad():
        expected = reference(ids).logits
    assert expected.shape == loaded["logits"].shape
    assert torch.equal(expected, loaded["logits"])
    assert loaded["template"] == CHAT_TEMPLATE == tokenizer.chat_template


@pytest.mark.slow
def test_chat_template_renders_the_same_tokens(tiny_gguf: Path, imported: Path) -> None:
    original = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    copy = AutoTokenizer.from_pretrained(imported)
    messages = [{"role": "user", "content": "Write a function."}]
    rendered = copy.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith("<|im_start|>user\n") and rendered.endswith("<|im_start|>assistant\n")
    assert rendered == original.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert copy(rendered)["input_ids"] == original(rendered)["input_ids"]
    assert copy.convert_tokens_to_ids("<|im_start|>") == original.convert_tokens_to_ids("<|im_start|>")
    assert copy.eos_token == original.eos_token == "<|im_end|>"


def test_not_a_gguf_file_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(GGUFImportError, match="not a GGUF file"):
        import_gguf(fake, tmp_path / "out")
    with pytest.raises(GGUFImportError, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_gguf_gives_a_typed_error(tiny_gguf: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:200])
    with pytest.raises(GGUFImportError):
        import_gguf(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_non_empty_output_is_kept_without_overwrite(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(GGUFImportError, match="not empty"):
        import_gguf(tiny_gguf, out)
    assert (out / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_cli_import_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["model", "import-gguf", str(tiny_gguf), "--out", str(tmp_path / "m"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["model_type"] == "llama" and report["chat_template"] is True
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = runner.invoke(app, ["model", "import-gguf", str(tiny_gguf), "--out", str(tmp_path / "m")])
    assert again.exit_code == 2 and "not empty" in again.stderr
    bad = runner.invoke(app, ["model", "import-gguf", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and bad.stderr.startswith("error:")
