import pytest
import torch

from kx_spacy.training import Precision, PrecisionError, resolve_device, resolve_precision


def test_policy_on_the_cpu(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("fp32", cpu) == "fp32"
    with pytest.raises(PrecisionError, match="fp16' needs a CUDA GPU"):
        resolve_precision("fp16", cpu)
    p = Precision.create("bf16", cpu)
    with p.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with Precision.create("fp32", cpu).autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert p.grad_scaler() is None
    monkeypatch.setenv("KX_FORCE_CPU", "1")
    assert resolve_device() == cpu and resolve_device("cpu").type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_policy_on_a_gpu():
    gpu = torch.device("cuda", 0)
    assert resolve_precision("auto", gpu) in ("bf16", "fp32")
    assert Precision.create("fp16", gpu).grad_scaler() is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(PrecisionError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(PrecisionError, match="Unknown device"):
        resolve_device("tpu:0")

