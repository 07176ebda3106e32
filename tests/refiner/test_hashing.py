"""The one SHA-256 helper: the same bytes give hashlib's digest whatever container holds them, and the names
already written into manifests and checkpoints do not change."""

import hashlib
from pathlib import Path

import numpy as np
import torch

import refiner
from refiner.hashing import sha256_hex, sha256_of_file, state_dict_sha256

ROOT = Path(__file__).resolve().parents[2]


def test_parts_hash_as_their_concatenated_bytes() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = hashlib.sha256(b"ab" + "é".encode() + array.tobytes() + array.T.copy().tobytes()).hexdigest()
    assert sha256_hex(b"a", bytearray(b"b"), "é", array, torch.from_numpy(array).T) == expected
    assert sha256_hex(array.T) == hashlib.sha256(np.ascontiguousarray(array.T).tobytes()).hexdigest()
    assert sha256_hex() == hashlib.sha256().hexdigest()
    bf16 = torch.tensor([1.0, -2.5], dtype=torch.bfloat16)  # a dtype numpy lacks
    assert sha256_hex(bf16) == hashlib.sha256(bf16.view(torch.int16).numpy().tobytes()).hexdigest()
    assert sha256_hex(torch.tensor(3)) == hashlib.sha256(np.array(3, dtype=np.int64).tobytes()).hexdigest()


def test_file_and_weights_hashes_are_unchanged() -> None:
    weights = ROOT / "checkpoints" / "vanilla" / "model.safetensors"
    assert sha256_of_file(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    # The checkpoint's recorded file hash, and the weights hash manifests written before this helper hold.
    assert refiner.load_model("vanilla").info.weights_sha256 == sha256_of_file(weights)
    model = refiner.load_model("vanilla").model
    assert state_dict_sha256(model) == "5da983bf826f8a3646cdc1708694616e2398b4fd794cf5e6c1fb6abb9604af35"
    model.float()
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert state_dict_sha256(model) != "5da983bf826f8a3646cdc1708694616e2398b4fd794cf5e6c1fb6abb9604af35"
